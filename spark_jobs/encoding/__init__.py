"""Encoding: knowledge answers → sentence-transformers vectors (chunked, never truncated) → vector tables.

``model`` loads and runs the sentence encoder, ``chunking`` splits texts longer than the model's window,
``parts`` is the append-only parquet table Spark tasks write to, ``schema`` the vector table's columns and
``job`` the Spark job that ties them together with resume and quarantine.
"""
