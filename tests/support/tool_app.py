"""``examples/tool_server.py`` in a child process on a free loopback port, with its tools file."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.server import free_port

ROOT = Path(__file__).resolve().parent.parent.parent
SECRET = "tool-secret"


@contextmanager
def tool_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Yields (its URL, the --tools file declaring its get_weather)."""
    port = free_port()
    tools = tmp_path / "tools.json"
    log = open(tmp_path / "tool_server.log", "wb")
    cmd = [sys.executable, str(ROOT / "examples" / "tool_server.py"), "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--secret", SECRET, "--declare", str(tools)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "tool_server.log").read_text()
            try:
                urllib.request.urlopen(f"{url}/tools/weather", timeout=1)
            except urllib.error.HTTPError:  # 405 for a GET: it is up
                break
            except OSError:
                assert time.monotonic() < deadline, "the tool server did not come up"
                time.sleep(0.1)
        yield url, tools
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
