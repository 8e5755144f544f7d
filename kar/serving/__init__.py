"""Serving: Feast store access, online lookup, scoring and the ranking service.

Its only contact with Feast's internals is ``kar.serving.feast_adapter`` (pinned by contract tests against the
installed Feast); everything else here uses Feast's public SDK.
"""
