"""A `kar serve` process a test started: POST /rank once it answers /healthz (it loads the model and store first)."""

from __future__ import annotations

import contextlib
import subprocess
from typing import Any

import httpx

# ~3 minutes: 900 tries of a 1 s health check or a 0.2 s wait for the process.
TRIES = 900


def rank_when_up(server: subprocess.Popen[str], url: str, body: dict[str, Any]) -> dict[str, Any]:
    """The ranking ``server`` at ``url`` gives for ``body``; fails with its output if it exits first."""
    for _ in range(TRIES):
        if server.poll() is not None:
            output = server.stdout.read()[-3000:] if server.stdout else ""
            raise AssertionError(f"kar serve exited {server.returncode}: {output}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                break
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=0.2)
    response = httpx.post(f"{url}/rank", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()
