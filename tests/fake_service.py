"""A test double for fault injection: a process that stands in for the vLLM server in process-control tests.

It forks a grandchild that stays in its process group (like vLLM's engine core), answers ``GET`` on its
``--port`` with 200 (``/health``, ``/v1/models``), and on request crashes at start (``FAKE_CRASH=1``) or ignores
SIGTERM (``FAKE_IGNORE_TERM=1``), so stopping has to escalate. It is not a model: the real server is tested in
the tests marked ``llm``.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

FAKE_SERVER = textwrap.dedent(
    """
    import http.server, os, signal, sys, time
    port = int(sys.argv[sys.argv.index("--port") + 1])
    if os.environ.get("FAKE_CRASH"):
        print("fake-server: config.json not found in /no/such/model", flush=True)
        sys.exit(3)
    if os.environ.get("FAKE_IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.fork() == 0:  # grandchild: stays in the group, must be killed too
        if os.environ.get("FAKE_IGNORE_TERM"):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            time.sleep(1)
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(b"{}")
        def log_message(self, *args):
            pass
    http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)


def fake_python(folder: Path) -> Path:
    """An executable to pass as ``LLMServer(python=...)``: it runs the double instead of ``python -m vllm…``."""
    script = folder / "fake_server.py"
    script.write_text(FAKE_SERVER)
    wrapper = folder / "python"
    wrapper.write_text(f'#!/bin/sh\nshift 2\nexec {sys.executable} {script} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper
