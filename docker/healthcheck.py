#!/usr/bin/env python3
"""Container health check: every TCP listener of `clearinghouse serve` accepts a connection.

Only TCP connects, closed before TLS starts: each port requires a client certificate for anything
more, and a connection closed before the ClientHello is neither a refused handshake nor audited
(clearinghouse.tls). Ports come from the same CLEARINGHOUSE_* variables the server reads. Exit 0 when
all accept, 1 (naming the ones that did not) otherwise.
"""

from __future__ import annotations

import os
import socket
import sys

PORTS = {
    "https": ("CLEARINGHOUSE_HTTPS_PORT", 8443),
    "feed": ("CLEARINGHOUSE_FEED_PORT", 8890),
    "pix": ("CLEARINGHOUSE_PIX_PORT", 8888),
    "syslog-tls": ("CLEARINGHOUSE_SYSLOG_TLS_PORT", 6514),
}


def main() -> int:
    host = os.environ.get("CLEARINGHOUSE_HEALTHCHECK_HOST", "127.0.0.1")
    failed = []
    for name, (variable, default) in PORTS.items():
        port = int(os.environ.get(variable) or default)
        try:
            with socket.create_connection((host, port), timeout=5):
                pass
        except OSError as exc:
            failed.append(f"{name} ({host}:{port}): {exc}")
    if failed:
        print("not accepting: " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
