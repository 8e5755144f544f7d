"""Where a job run's wall time goes: seconds per named stage, reported in every job's summary.

Fixed cost (starting Spark, reading, gates, writes, commits, the summary) is what small incremental runs pay
in full, so each job names its stages and ``kar bench encode`` shows them beside its throughput ratio.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class StageTimes:
    """Wall seconds per stage, in the order the stages first ran; a stage entered twice adds up."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def merge(self, other: StageTimes) -> None:
        for name, seconds in other.seconds.items():
            self.add(name, seconds)

    def as_dict(self) -> dict[str, float]:
        """Rounded seconds per stage plus their ``total``."""
        out = {name: round(seconds, 3) for name, seconds in self.seconds.items()}
        out["total"] = round(sum(self.seconds.values()), 3)
        return out

    def steps(self, progress: Callable[[str], None] | None = None) -> StepTimer:
        """A progress callback that also times each step until the next one (the step's message names it)."""
        return StepTimer(self, progress)


class StepTimer:
    """Times the steps a job announces through its progress callback; :meth:`done` closes the last one."""

    def __init__(self, times: StageTimes, progress: Callable[[str], None] | None) -> None:
        self._times, self._progress = times, progress
        self._current: str | None = None
        self._since = time.perf_counter()

    def __call__(self, message: str) -> None:
        self.done()
        self._current, self._since = message, time.perf_counter()
        if self._progress is not None:
            self._progress(message)

    def detail(self, message: str) -> None:
        """Passes a live-line detail through (``kar.cli``'s steps show it), without starting a step."""
        detail = getattr(self._progress, "detail", None)
        if detail is not None:
            detail(message)

    def done(self) -> None:
        if self._current is not None:
            self._times.add(self._current, time.perf_counter() - self._since)
            self._current = None
