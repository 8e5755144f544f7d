"""Calling OpenAI-compatible LLM servers from Spark tasks: the async client and the answer cache."""
