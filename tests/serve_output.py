"""Reading what ``clearinghouse serve`` prints when it starts (tests that run it as a real process)."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Callable

_ENDPOINT = re.compile(r"^\s+(.+?): (\S+)$", re.M)


def wait_for_endpoints(
    proc: subprocess.Popen, timeout: float = 60, *, name: str = "serve", exit_detail: Callable[[], str] | None = None
) -> dict[str, str]:
    """The endpoints (name -> URL) ``serve`` printed, once it printed them all; an AssertionError with its
    output (and ``exit_detail()``, by default its stderr) if it exits or stays silent for ``timeout``."""
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            detail = exit_detail() if exit_detail else proc.stderr.read()  # type: ignore[union-attr]
            raise AssertionError(f"{name} exited: {''.join(lines)}\n{detail}")
        lines.append(line)
        if line.startswith("Register a participant"):
            return dict(_ENDPOINT.findall("".join(lines)))
    raise AssertionError(f"{name} did not print its endpoints")


def port_of(endpoints: dict[str, str], name_part: str) -> int:
    """The port of the one endpoint whose name contains ``name_part``."""
    (url,) = [u for n, u in endpoints.items() if name_part in n]
    return int(url.rsplit(":", 1)[1].split("/")[0])


def keep_draining(proc: subprocess.Popen) -> None:
    """Read the rest of the server's output in the background, so a full pipe never blocks it."""
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            threading.Thread(target=stream.read, daemon=True).start()
