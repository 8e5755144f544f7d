"""How long jobs report what they are doing: a callable taking one line (the CLI passes a rich status)."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str], None]
"""Called with a short line ("encoding user: 1,000 texts") each time a job enters a step."""


def silent(_message: str) -> None:
    """The progress callback of a caller that wants none."""
