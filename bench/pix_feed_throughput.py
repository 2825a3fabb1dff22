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
        [--processes N]                     # N serve processes on one PostgreSQL database

With ``--processes N`` (PostgreSQL only) it starts N ``serve`` processes on the same database and the
same home (one PKI), each with its own ports and its own audit spool (docs/operations.md, "Several
processes"); the one-connection phase uses the first, the others spread their connections round-robin
over all of them, as a TCP load balancer would. The checks are the same, on the database all share
(every message and identifier stored exactly once, each new patient linking its message's two
identifiers); the CPU time is reported per process and summed, and on PostgreSQL the CPU time of the
database backends serving this database is added (the database runs on the same cores).
"""

from __future__ import annotations

import argparse
import os
import re
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
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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


def phase(
    ports: list[int], ctx: ssl.SSLContext, run: str, total: int, connections: int
) -> tuple[float, list[str], list[int]]:
    """Send ``total`` messages over ``connections`` concurrent connections, connection i going to
    ``ports[i % len(ports)]`` (round-robin, as a TCP load balancer spreads new connections); the wall
    time, the failures and how many messages each port was sent."""
    failures: list[str] = []
    per = total // connections
    sent = [0] * len(ports)
    threads = []
    for i in range(connections):
        port = i % len(ports)
        sent[port] += per
        threads.append(
            threading.Thread(target=sender, args=(ports[port], ctx, run, range(i * per, (i + 1) * per), failures))
        )
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started, failures, sent


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


@dataclass(frozen=True)
class Stored:
    """What the database holds for one run: rows, distinct keys (equal when nothing is stored twice),
    patients holding exactly the MRN and RSNA-ID of one message, and writer transactions (the writer
    stamps every new patient of one transaction with the same time; each process has its own writer)."""

    messages: int
    distinct_messages: int
    identifiers: int
    distinct_identifiers: int
    linked_patients: int
    commits: int

    def complete(self, total: int) -> bool:
        return (
            self.messages == self.distinct_messages == total
            and self.identifiers == self.distinct_identifiers == 2 * total
            and self.linked_patients == total
        )


def stored(db_url: str, run: str) -> Stored:
    engine = create_engine(db_url)
    msg = {"p": run + "%"}
    ident = {"p": "_" + run + "%"}
    queries = [
        # count(DISTINCT (a, b)) is PostgreSQL only; a DISTINCT subquery works on SQLite too.
        (
            "SELECT (SELECT count(*) FROM pix_message WHERE control_id LIKE :p),"
            " (SELECT count(*) FROM (SELECT DISTINCT sender, control_id FROM pix_message WHERE control_id LIKE :p) d)",
            msg,
        ),
        (
            "SELECT (SELECT count(*) FROM pix_identifier WHERE value LIKE :p),"
            " (SELECT count(*) FROM (SELECT DISTINCT domain_id, value FROM pix_identifier WHERE value LIKE :p) d)",
            ident,
        ),
        # A patient cross-references one message's two identifiers: M<control> and R<control>, nothing else.
        (
            "SELECT count(*), 0 FROM (SELECT patient_id FROM pix_identifier WHERE value LIKE :p GROUP BY patient_id"
            " HAVING count(*) = 2 AND min(substr(value, 2)) = max(substr(value, 2))"
            " AND min(substr(value, 1, 1)) = 'M' AND max(substr(value, 1, 1)) = 'R') AS linked",
            ident,
        ),
        ("SELECT count(DISTINCT created_at), 0 FROM pix_identifier WHERE value LIKE :p", ident),
    ]
    with engine.connect() as conn:
        rows = [conn.execute(text(sql), params).one() for sql, params in queries]
    engine.dispose()
    (m, dm), (i, di), (linked, _), (commits, _) = ((int(a), int(b)) for a, b in rows)
    return Stored(m, dm, i, di, linked, commits)


def database_backends(db_url: str) -> list[int]:
    """Process ids of the PostgreSQL backends connected to this run's database (its server runs on
    this machine, so their CPU time is read from /proc like the serve processes')."""
    engine = create_engine(db_url)
    with engine.connect() as conn:
        pids = conn.execute(
            text("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
        ).scalars()
        result = [int(p) for p in pids]
    engine.dispose()
    return result


def backend_cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds (user + system) of each backend still running; one that has exited is left out."""
    result = {}
    for pid in pids:
        try:
            result[pid] = sum(cpu_seconds(pid))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return result


@dataclass
class Server:
    """One ``serve`` process of the benchmark: its own ports, audit spool and log; the home (PKI) and
    the database are shared, as docs/operations.md prescribes for several processes."""

    proc: subprocess.Popen[bytes]
    pix: int
    log: BinaryIO


def start_server(i: int, tmp: Path, home: Path, db_url: str) -> Server:
    https, feed, pix, syslog_tls, syslog_udp = free_ports(5)
    env = {
        **CHILD_ENV,
        "CLEARINGHOUSE_LOG_LEVEL": "WARNING",
        "CLEARINGHOUSE_SYSLOG_TLS_PORT": str(syslog_tls),
        "CLEARINGHOUSE_SYSLOG_UDP_PORT": str(syslog_udp),
        "CLEARINGHOUSE_CONSOLE_PORT": "-1",  # not measured; and 9443 may be taken
        # Never shared between processes (a second one finds it locked and stops).
        "CLEARINGHOUSE_AUDIT_SPOOL_PATH": str(tmp / f"audit-spool-{i}"),
    }
    if db_url:
        env["CLEARINGHOUSE_DATABASE_URL"] = db_url
    cmd = [*clearinghouse_cmd(), "serve", "--home", str(home)]
    cmd += ["--https-port", str(https), "--feed-port", str(feed), "--pix-port", str(pix)]
    log = (tmp / f"server-{i}.log").open("wb")
    return Server(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), pix, log)


def log_problems(path: Path) -> list[str]:
    """Lines of a server log at WARNING or above, or of a traceback: the servers log at WARNING, so
    anything but the start banner is something to look at (a retried unique-constraint conflict, an
    error answered to a sender)."""
    pattern = re.compile(r" (WARNING|ERROR|CRITICAL) |^Traceback")
    return [line for line in path.read_text(errors="replace").splitlines() if pattern.search(line)]


def stop_servers(servers: list[Server]) -> list[int | None]:
    """Terminate every server and return their exit codes (None: had to be killed)."""
    for s in servers:
        if s.proc.poll() is None:
            s.proc.terminate()
    codes: list[int | None] = []
    for s in servers:
        try:
            codes.append(s.proc.wait(30))
        except subprocess.TimeoutExpired:
            s.proc.kill()
            s.proc.wait()
            codes.append(None)
        s.log.close()
    return codes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=6000, help="messages per phase (default 6000)")
    ap.add_argument("--database-url", default="", help="PostgreSQL URL (default: SQLite in the temp home)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (server-N.log)")
    ap.add_argument(
        "--profile",
        default="",
        metavar="PREFIX",
        help="record the servers with py-spy during each phase (PREFIX-1.txt, PREFIX-8.txt: collapsed stacks; "
        "PREFIX-8-p1.txt... with several processes)",
    )
    ap.add_argument("--phases", default="1,8", help="connection counts to measure (default 1,8)")
    ap.add_argument(
        "--processes",
        type=int,
        default=1,
        help="serve processes on the one database, connections spread round-robin (default 1; >1: PostgreSQL only)",
    )
    args = ap.parse_args()
    if args.processes < 1:
        ap.error("--processes must be at least 1")
    if args.processes > 1 and not args.database_url.startswith("postgresql"):
        # Several processes on one SQLite file would only contend for its single write lock, and the
        # supported several-process topology (docs/operations.md) is on PostgreSQL.
        ap.error("--processes > 1 needs --database-url postgresql://...: several serve processes share PostgreSQL")
    tmp = Path(tempfile.mkdtemp(prefix="pix-bench-"))
    home = tmp / "home"
    db_url = args.database_url or f"sqlite:///{home / 'clearinghouse.db'}"
    # The CLI creates the home (PKI, keys) and migrates the database before any server starts, so the
    # processes share one PKI without racing to create it.
    cli(home, args.database_url, "participants", "add", SOURCE, "--role", "source", "--out", str(tmp / "edge"))
    cli(home, args.database_url, "pix", "domains", "add", SITE_OID, "--namespace", SITE_NS)
    ctx = client_context(
        tmp / "edge" / "ca.cert.pem", tmp / "edge" / f"{SOURCE}.cert.pem", tmp / "edge" / f"{SOURCE}.key.pem"
    )
    servers: list[Server] = []
    ok = True
    try:
        for i in range(args.processes):
            servers.append(start_server(i, tmp, home, args.database_url))
        ports = [s.pix for s in servers]
        for s in servers:
            wait_for_port(s.proc, s.pix, ctx)
        # Warm-up of every process: connections, caches, SQLite pages.
        phase(ports, ctx, "W" + uuid.uuid4().hex[:6], 300, 4 * args.processes)
        print(
            f"PIX Manager ITI-8 throughput, {os.cpu_count()} CPU(s), database {db_url.split('://')[0]}, "
            f"{args.processes} serve process{'es' if args.processes > 1 else ''}, "
            f"{args.messages} ADT^A04 per phase, lock-step MLLP/TLS"
        )
        for connections in (int(c) for c in args.phases.split(",")):
            ok &= measure(args, servers, ports, ctx, db_url, connections)
    finally:
        codes = stop_servers(servers)
        problem_lines = [log_problems(tmp / f"server-{i}.log") for i in range(len(servers))]
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if any(code != 0 for code in codes):
        print(f"serve exit codes {codes} (expected 0 after SIGTERM)")
        ok = False
    for i, problems in enumerate(problem_lines):
        # Reported, not judged: a warning is not a lost message, but says where to look.
        print(f"server {i} logged {len(problems)} warning/error line(s)" + "".join(f"\n    {p}" for p in problems[:5]))
    print("PASS: every message acknowledged and stored" if ok else "FAIL: messages missing (see above)")
    return 0 if ok else 1


def measure(
    args: argparse.Namespace,
    servers: list[Server],
    ports: list[int],
    ctx: ssl.SSLContext,
    db_url: str,
    connections: int,
) -> bool:
    """One phase: ``connections`` lock-step senders, one connection only to the first process (there
    is nothing to spread), several round-robin over all of them. Prints the figures; True when every
    message was acknowledged AA and stored exactly once."""
    used = servers if connections > 1 else servers[:1]
    run = f"B{connections}{uuid.uuid4().hex[:6]}"
    spies = []
    if args.profile:
        for i, s in enumerate(used):
            suffix = f"-p{i}" if len(servers) > 1 else ""
            spies.append(profiler(s.proc.pid, f"{args.profile}-{connections}{suffix}.txt"))
    postgres = db_url.startswith("postgresql")
    backends = database_backends(db_url) if postgres else []
    db_before = backend_cpu(backends)
    cpu_before = [cpu_seconds(s.proc.pid) for s in servers]
    client_before = time.process_time()
    seconds, failures, sent = phase(ports[: len(used)], ctx, run, args.messages, connections)
    client_cpu = time.process_time() - client_before
    cpu_after = [cpu_seconds(s.proc.pid) for s in servers]
    # Backends opened during the phase count from zero; one closed during it is missed (the pools
    # keep their connections, so this is rare).
    backends = sorted(set(backends) | set(database_backends(db_url))) if postgres else []
    db_after = backend_cpu(backends)
    for spy in spies:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
    total = args.messages // connections * connections
    rate = total / seconds
    result = stored(db_url, run)
    complete = not failures and result.complete(total)
    print(
        f"  {connections} connection{'s' if connections > 1 else ' '}: {total} messages in {seconds:6.2f} s = "
        f"{rate:7.0f} msg/s ({rate / GOAL:4.2f} x the {GOAL:.0f}/s goal); "
        f"acknowledged AA {total - len(failures)}/{total}, stored {result.messages} messages "
        f"({result.distinct_messages} distinct) and {result.identifiers} identifiers "
        f"({result.distinct_identifiers} distinct, {result.linked_patients} patients linking exactly their "
        f"message's two){'' if complete else '  <-- INCOMPLETE'}"
    )
    users = [a[0] - b[0] for a, b in zip(cpu_after, cpu_before, strict=True)]
    systems = [a[1] - b[1] for a, b in zip(cpu_after, cpu_before, strict=True)]
    if len(servers) > 1:
        for i, (user, system) in enumerate(zip(users, systems, strict=True)):
            cpu = user + system
            per = f"{cpu / sent[i] * 1e6:6.0f} us/message" if i < len(sent) and sent[i] else "    - us/message"
            print(
                f"     process {i}: {sent[i] if i < len(sent) else 0:5d} messages, server CPU {cpu:6.2f} s "
                f"(user {user:.2f}, system {system:.2f}) = {per} ({cpu / seconds:4.2f} cores busy)"
            )
    user, system = sum(users), sum(systems)
    cpu = user + system
    per_message = cpu / total
    # The servers' CPU time per message bounds what two idle cores could do: two cores give at most
    # 2 / per_message messages a second (less, since the GIL serialises most of each process's work).
    print(
        f"     {'total ' if len(servers) > 1 else ''}server CPU {cpu:6.2f} s (user {user:.2f}, system {system:.2f}) = "
        f"{per_message * 1e6:6.0f} us/message ({cpu / seconds:4.2f} cores busy); one idle core would give "
        f"{1 / per_message:7.0f} msg/s; {result.commits} writer transactions "
        f"({total / max(result.commits, 1):4.1f} messages per commit)"
    )
    if postgres:
        db_cpu = sum(db_after.get(pid, 0.0) - db_before.get(pid, 0.0) for pid in db_after)
        both = (cpu + db_cpu) / total
        print(
            f"     PostgreSQL backends of this database ({len(db_after)}): CPU {db_cpu:6.2f} s = "
            f"{db_cpu / total * 1e6:6.0f} us/message; servers + backends {both * 1e6:6.0f} us/message, "
            f"two idle cores would give {2 / both:7.0f} msg/s ({2 / both / GOAL:4.2f} x the goal)"
        )
    # The senders run on the same cores: what they take is not available to the servers.
    print(
        f"     this benchmark's senders (one interpreter): CPU {client_cpu:6.2f} s = "
        f"{client_cpu / total * 1e6:6.0f} us/message ({client_cpu / seconds:4.2f} cores busy)"
    )
    for f in failures[:5]:
        print(f"    {f}")
    return complete


if __name__ == "__main__":
    sys.exit(main())
