"""Benchmark: ITI-8 Patient Identity Feed throughput of the PIX Manager, over MLLP/TLS.

Requirement: "a throughput benchmark under bench/ that prints ITI-8 messages per second over one TLS
connection and over eight. The goal is at least 2,000 messages per second on two cores with every
message acknowledged and stored."

Starts ``clearinghouse serve`` as a separate process on a fresh home (SQLite by default, or
``--database-url``), registers a source with the real CLI and a site domain (``pix domains add``),
then sends ADT^A04 messages (v2.3.1, PID-3 = the site's MRN and an RSNA-ID, i.e. a new cross-
reference each) lock-step (send, wait for the ACK, send the next, as MLLP senders do) over one TLS
connection, then over eight concurrent ones. Every ACK must be AA for its own control id; afterwards
the database must hold every message (duplicate-control rows) and every identifier. Prints messages
per second and the ratio to the 2,000/s goal; exit code 0 when every message was acknowledged and
stored (the figures are reported, not judged: they depend on the machine).

    .venv/bin/python bench/pix_feed_throughput.py [--messages 6000] [--database-url URL] [--keep]
        [--phases 1,8] [--profile PREFIX]   # PREFIX-N.txt: py-spy collapsed stacks of phase N
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]
CHILD_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

from serverproc import clearinghouse_cmd, free_ports  # noqa: E402  (bench/serverproc.py)
from sqlalchemy import create_engine, text  # noqa: E402

from clearinghouse.mllp import MllpClient  # noqa: E402
from clearinghouse.tls import client_context  # noqa: E402

GOAL = 2000.0
AFFINITY = "1.3.6.1.4.1.19376.3.840.1.1.1"
# Unique per run, so that a PostgreSQL database can be reused between runs.
RUN = uuid.uuid4().hex[:8]
SITE_OID, SITE_NS, SOURCE = f"1.2.826.0.1.3680043.10.1045.{int(RUN, 16)}", f"BENCH-{RUN}", f"bench-edge-{RUN}"


def cli(home: Path, db_url: str, *args: str) -> None:
    extra = ["--database-url", db_url] if db_url else []
    subprocess.run(
        [*clearinghouse_cmd(), *args, "--home", str(home), *extra], check=True, env=CHILD_ENV, stdout=subprocess.DEVNULL
    )


def wait_for_port(proc: subprocess.Popen[bytes], port: int, tls: ssl.SSLContext, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            with socket.create_connection(("localhost", port), timeout=5) as sock:
                tls.wrap_socket(sock, server_hostname="localhost").close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server did not listen on port {port}")


def message(run: str, n: int) -> tuple[str, bytes]:
    control = f"{run}{n:08d}"
    segments = [
        f"MSH|^~\\&|EDGE|BENCH|PIX_MANAGER|ISN|20261123120000||ADT^A04^ADT_A01|{control}|P|2.3.1",
        "EVN|A04|20261123120000",
        f"PID|||M{control}^^^{SITE_NS}&{SITE_OID}&ISO~R{control}^^^&{AFFINITY}&ISO||DOE^JANE||19700412|F",
        "PV1||O",
    ]
    return control, ("\r".join(segments) + "\r").encode()


def sender(port: int, ctx: ssl.SSLContext, run: str, numbers: range, failures: list[str]) -> None:
    client = MllpClient("localhost", port, ctx)
    try:
        for n in numbers:
            control, data = message(run, n)
            ack = client.send(data)
            if f"MSA|AA|{control}".encode() not in ack:
                failures.append(f"{control}: {ack[:200]!r}")
    except Exception as exc:  # noqa: BLE001 - reported as a failure of this connection
        failures.append(f"connection failed: {exc}")
    finally:
        client.close()


def phase(port: int, ctx: ssl.SSLContext, run: str, total: int, connections: int) -> tuple[float, list[str]]:
    failures: list[str] = []
    per = total // connections
    threads = [
        threading.Thread(target=sender, args=(port, ctx, run, range(i * per, (i + 1) * per), failures))
        for i in range(connections)
    ]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started, failures


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time of process ``pid`` so far (Linux /proc): less sensitive to what else
    runs on the machine than wall time, so the cost per message can be compared across runs."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def profiler(pid: int, out: str) -> subprocess.Popen[bytes]:
    """py-spy sampling the server into collapsed stacks at ``out``: only threads holding the GIL, so the
    samples are where the interpreter spends its (serialised) time, not where threads wait."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    cmd = [spy, "record", "--pid", str(pid), "--rate", "250", "--format", "raw", "--output", out, "--nonblocking"]
    cmd.append("--gil")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached before the phase starts
    return proc


def stored(db_url: str, run: str) -> tuple[int, int, int]:
    """Messages and identifiers stored for ``run``, and the number of writer transactions that stored
    them: the writer stamps every new patient of one transaction with the same time."""
    engine = create_engine(db_url)
    with engine.connect() as conn:
        messages = conn.execute(text("SELECT count(*) FROM pix_message WHERE control_id LIKE :p"), {"p": run + "%"})
        like = {"p": "_" + run + "%"}
        idents = conn.execute(text("SELECT count(*) FROM pix_identifier WHERE value LIKE :p"), like)
        commits = conn.execute(text("SELECT count(DISTINCT created_at) FROM pix_identifier WHERE value LIKE :p"), like)
        result = int(messages.scalar_one()), int(idents.scalar_one()), int(commits.scalar_one())
    engine.dispose()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=6000, help="messages per phase (default 6000)")
    ap.add_argument("--database-url", default="", help="PostgreSQL URL (default: SQLite in the temp home)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (server.log)")
    ap.add_argument(
        "--profile",
        default="",
        metavar="PREFIX",
        help="record the server with py-spy during each phase (PREFIX-1.txt, PREFIX-8.txt: collapsed stacks)",
    )
    ap.add_argument("--phases", default="1,8", help="connection counts to measure (default 1,8)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pix-bench-"))
    home = tmp / "home"
    db_url = args.database_url or f"sqlite:///{home / 'clearinghouse.db'}"
    https, feed, pix, syslog_tls, syslog_udp = free_ports(5)
    cli(home, args.database_url, "participants", "add", SOURCE, "--role", "source", "--out", str(tmp / "edge"))
    cli(home, args.database_url, "pix", "domains", "add", SITE_OID, "--namespace", SITE_NS)
    env = {
        **CHILD_ENV,
        "CLEARINGHOUSE_LOG_LEVEL": "WARNING",
        "CLEARINGHOUSE_SYSLOG_TLS_PORT": str(syslog_tls),
        "CLEARINGHOUSE_SYSLOG_UDP_PORT": str(syslog_udp),
        "CLEARINGHOUSE_CONSOLE_PORT": "-1",  # not measured; and 9443 may be taken
    }
    if args.database_url:
        env["CLEARINGHOUSE_DATABASE_URL"] = args.database_url
    cmd = [
        *clearinghouse_cmd(),
        "serve",
        "--home",
        str(home),
        "--https-port",
        str(https),
        "--feed-port",
        str(feed),
        "--pix-port",
        str(pix),
    ]
    log = (tmp / "server.log").open("wb")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    ctx = client_context(
        tmp / "edge" / "ca.cert.pem", tmp / "edge" / f"{SOURCE}.cert.pem", tmp / "edge" / f"{SOURCE}.key.pem"
    )
    ok = True
    try:
        wait_for_port(server, pix, ctx)
        phase(pix, ctx, "W" + uuid.uuid4().hex[:6], 300, 4)  # warm-up: connections, caches, SQLite pages
        print(
            f"PIX Manager ITI-8 throughput, {os.cpu_count()} CPU(s), database {db_url.split('://')[0]}, "
            f"{args.messages} ADT^A04 per phase, lock-step MLLP/TLS"
        )
        for connections in (int(c) for c in args.phases.split(",")):
            run = f"B{connections}{uuid.uuid4().hex[:6]}"
            spy = profiler(server.pid, f"{args.profile}-{connections}.txt") if args.profile else None
            cpu_before = cpu_seconds(server.pid)
            seconds, failures = phase(pix, ctx, run, args.messages, connections)
            cpu_after = cpu_seconds(server.pid)
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
            user, system = cpu_after[0] - cpu_before[0], cpu_after[1] - cpu_before[1]
            cpu = user + system
            total = args.messages // connections * connections
            rate = total / seconds
            per_message = cpu / total
            messages, identifiers, commits = stored(db_url, run)
            complete = not failures and messages == total and identifiers == 2 * total
            ok &= complete
            print(
                f"  {connections} connection{'s' if connections > 1 else ' '}: {total} messages in {seconds:6.2f} s = "
                f"{rate:7.0f} msg/s ({rate / GOAL:4.2f} x the {GOAL:.0f}/s goal); "
                f"acknowledged AA {total - len(failures)}/{total}, stored {messages} messages and "
                f"{identifiers} identifiers{'' if complete else '  <-- INCOMPLETE'}"
            )
            # The server's CPU time per message bounds what two idle cores could do: two cores give at
            # most 2 / per_message messages a second (less, since the GIL serialises most of the work).
            print(
                f"     server CPU {cpu:6.2f} s (user {user:.2f}, system {system:.2f}) = "
                f"{per_message * 1e6:6.0f} us/message "
                f"({cpu / seconds:4.2f} cores busy); one idle core would give {1 / per_message:7.0f} msg/s; "
                f"{commits} writer transactions ({total / max(commits, 1):4.1f} messages per commit)"
            )
            for f in failures[:5]:
                print(f"    {f}")
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print("PASS: every message acknowledged and stored" if ok else "FAIL: messages missing (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
