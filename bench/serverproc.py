"""What the benchmarks share for running ``clearinghouse`` as a separate process."""

from __future__ import annotations

import socket
import sys
from pathlib import Path


def clearinghouse_cmd() -> list[str]:
    """The ``clearinghouse`` command of this interpreter's environment (or the module if not installed)."""
    script = Path(sys.executable).with_name("clearinghouse")
    return [str(script)] if script.exists() else [sys.executable, "-m", "clearinghouse.cli"]


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on the loopback interface right now."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
