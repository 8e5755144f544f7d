"""Where a job run's wall time goes: seconds per named stage, reported in every job's summary.

Fixed cost (starting Spark, reading, gates, writes, commits, the summary) is what small incremental runs pay
in full, so each job names its stages and ``kar bench encode`` shows them beside its throughput ratio.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
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
