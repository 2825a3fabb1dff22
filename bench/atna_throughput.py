"""Benchmark: ITI-20 Record Audit Event throughput of the Audit Record Repository, over TLS syslog.

Requirement: "records per second over one and over eight TLS connections, with the count stored
equal to the count sent. The goal is at least 10,000 records per second on two cores with none lost."

Starts ``clearinghouse serve`` as a separate process on a fresh home (SQLite by default, or
``--database-url``), registers a sender with the real CLI, then sends N DICOM audit messages (ITI-41
Export events as an edge records them, about 1.6 kB each, RFC 5425 octet-counted) over one TLS
connection, then N over eight concurrent connections. Each connection ends with a TLS close_notify
and waits for the server's, which the server sends only once every record it read is durable (in
its spool). Two figures per run:

- acknowledged: records / time from the first byte sent to the last close_notify received;
- stored: records / time from the first byte sent until the database holds every one of them
  (parsed, validated, indexed and hash-chained), checked by counting them in the database.

The stored count must equal the sent count, and ``clearinghouse audit verify`` must find the hash
chain intact; exit code 0 then, 1 otherwise. Figures are printed with their ratio to 10,000/s.

    .venv/bin/python bench/atna_throughput.py [--records 50000] [--postgresql-url URL] [--only sqlite|postgresql]

It runs on SQLite, then on PostgreSQL (a fresh database on --postgresql-url, default
$CLEARINGHOUSE_TEST_DATABASE_URL, created and dropped by the run). Besides the rates it prints the
server's CPU seconds per 1,000 records (its parse workers included; a PostgreSQL server's not), which
depends much less on other load than the rates do, and the rate two idle cores would reach at that
cost.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
CHILD_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

from atna_client import edge_export, send_tls  # noqa: E402  (test helpers: tests/atna_client.py)
from conftest import Identity  # noqa: E402
from sqlalchemy import create_engine, make_url, text  # noqa: E402

from clearinghouse.db import make_engine  # noqa: E402

GOAL = 10_000


def cli(*args: str, home: Path, database_url: str) -> str:
    cmd = [sys.executable, "-m", "clearinghouse.cli", *args, "--home", str(home)]
    if database_url:
        cmd += ["--database-url", database_url]
    done = subprocess.run(cmd, capture_output=True, text=True, env=CHILD_ENV, timeout=300)
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(args)} failed: {done.stderr}")
    return done.stdout


def start_server(home: Path, database_url: str, log: Path) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, "-m", "clearinghouse.cli", "serve", "--home", str(home)]
    cmd += ["--https-port", "0", "--feed-port", "0", "--syslog-tls-port", "0", "--syslog-udp-port", "0"]
    if database_url:
        cmd += ["--database-url", database_url]
    env = {
        **CHILD_ENV,
        "CLEARINGHOUSE_PIX_PORT": "0",
        "CLEARINGHOUSE_CONSOLE_PORT": "0",
        "CLEARINGHOUSE_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
    port = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"serve exited; see {log}")
        m = re.search(r"syslog/TLS\): syslog\+tls://\S+:(\d+)", line)
        if m:
            port = int(m.group(1))
        if line.startswith("Register a participant"):
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, port
    raise SystemExit("serve did not start")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the server and of its live children (the parse workers), from /proc."""
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float, float]:
    """(user, system) CPU seconds of the server process itself, and user + system of its live children."""
    ticks = os.sysconf("SC_CLK_TCK")
    own_user = own_system = children = 0.0
    for p in [pid, *child_pids(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user, system = int(fields[11]) / ticks, int(fields[12]) / ticks
        if p == pid:
            own_user, own_system = user, system
        else:
            children += user + system
    return own_user, own_system, children


def child_pids(pid: int) -> list[int]:
    """Children started by any thread of ``pid`` (each thread lists its own)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def count_stored(engine, tag: str) -> int:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT count(*) FROM audit_index WHERE kind = 'entity' AND value LIKE :p"), {"p": f"{tag}.%"}
        ).scalar_one()


def run(
    label: str, port: int, ident: Identity, engine, records: int, connections: int, server_pid: int
) -> tuple[bool, str]:
    tag = f"{label}{int(time.time() * 1000)}"
    per = records // connections
    batches = [
        [edge_export(f"{tag}-{c}^^^&1.2.3&ISO", f"{tag}.{c}.{i}") for i in range(per)] for c in range(connections)
    ]
    sent = per * connections
    errors: list[BaseException] = []

    def sender(batch: list[bytes]) -> None:
        try:
            send_tls(port, ident, batch)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(b,)) for b in batches]
    split_before = cpu_split(server_pid)
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    acked = time.perf_counter() - start
    stored = 0
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        stored = count_stored(engine, tag)
        if stored >= sent:
            break
        time.sleep(0.05)
    in_db = time.perf_counter() - start
    split = [after - before for after, before in zip(cpu_split(server_pid), split_before, strict=True)]
    cpu = sum(split)
    ok = not errors and stored == sent
    lines = [
        f"{label}: {sent} records over {connections} TLS connection(s); {stored} stored"
        + ("" if not errors else f"; {len(errors)} connection error(s): {errors[0]}"),
        f"  acknowledged (durable in the spool): {acked:7.2f} s  {sent / acked:9,.0f} records/s"
        f"  ({sent / acked / GOAL:.2f} x goal)",
        f"  stored (in the database, chained):   {in_db:7.2f} s  {sent / in_db:9,.0f} records/s"
        f"  ({sent / in_db / GOAL:.2f} x goal)",
        f"  server CPU: {cpu:.2f} s = {cpu / sent * 1000:.3f} CPU s per 1,000 records"
        f" (receive, spool, parse, check, index, chain, store; parse workers included, a PostgreSQL server's not)",
        f"    of which the server process {split[0] / sent * 1e6:.0f} us user + {split[1] / sent * 1e6:.0f} us system"
        f" per record (receive, spool, write), the parse workers {split[2] / sent * 1e6:.0f} us per record",
        f"  two idle cores at that cost: at most {2 * sent / cpu:,.0f} records/s ({2 * sent / cpu / GOAL:.2f} x goal)",
    ]
    return ok, "\n".join(lines)


def bench_backend(database_url: str, records: int, keep: bool, warm: int = 0) -> bool:
    """One full run (one connection, then eight) against a fresh home on SQLite or a fresh PostgreSQL
    database; prints the figures and returns whether every record was stored and the chain verifies."""
    tmp = Path(tempfile.mkdtemp(prefix="atna-bench-"))
    home = tmp / "home"
    cli("participants", "add", "bench-edge", "--role", "source", "--out", str(tmp / "certs"), home=home,
        database_url=database_url)  # fmt: skip
    ident = Identity(
        "bench-edge",
        tmp / "certs" / "bench-edge.cert.pem",
        tmp / "certs" / "bench-edge.key.pem",
        tmp / "certs" / "ca.cert.pem",
    )
    url = database_url or f"sqlite:///{home / 'clearinghouse.db'}"
    engine = make_engine(url) if url.startswith("sqlite") else create_engine(url)
    proc, port = start_server(home, database_url, tmp / "server.log")
    load = os.getloadavg()[0]
    print(
        f"ATNA throughput: {os.cpu_count()} CPU(s), load average {load:.2f} before the run, "
        f"database {url.split('@')[-1]}, goal {GOAL:,} records/s",
        flush=True,
    )
    ok = True
    try:
        send_tls(port, ident, [edge_export("warmup^^^&1.2.3&ISO", "warmup.1")])
        if warm:
            # A backlog starts the parse worker processes (spawned: each imports the application, about a
            # CPU second); without this the first run's CPU figure includes their start.
            passed, report = run("warm-up", port, ident, engine, warm, 1, proc.pid)
            print(report.splitlines()[0] + " (parse workers started; not a measurement)", flush=True)
            ok = ok and passed
        for label, conns in (("one", 1), ("eight", 8)):
            passed, report = run(label, port, ident, engine, records, conns, proc.pid)
            print(report, flush=True)
            ok = ok and passed
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    verify = cli("audit", "verify", home=home, database_url=database_url).strip()
    print(verify)
    ok = ok and "intact" in verify
    print("PASS: every record sent was stored" if ok else "FAIL", flush=True)
    engine.dispose()
    if keep:
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return ok


def fresh_postgresql_database(server_url: str) -> tuple[str, Callable[[], None]]:
    """A new, empty database on the PostgreSQL server of ``server_url`` and a function that drops it."""
    name = f"atna_bench_{os.getpid()}_{int(time.time())}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(server_url).set(database=name).render_as_string(hide_password=False), drop


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=50_000, help="records per run (default 50000)")
    ap.add_argument(
        "--postgresql-url",
        default=os.environ.get("CLEARINGHOUSE_TEST_DATABASE_URL", ""),
        help="a PostgreSQL server to run on as well, in a fresh database created and dropped by the benchmark"
        " (default: $CLEARINGHOUSE_TEST_DATABASE_URL)",
    )
    ap.add_argument("--only", choices=("sqlite", "postgresql"), help="run on one backend only")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directories")
    ap.add_argument(
        "--warm",
        type=int,
        default=3000,
        help="records sent and stored before the measured runs, so that the parse workers are running (default"
        " 3000; 0: none, the first run then includes their start)",
    )
    args = ap.parse_args()
    ok = True
    if args.only != "postgresql":
        ok = bench_backend("", args.records, args.keep, args.warm) and ok
    if args.only != "sqlite":
        if not args.postgresql_url:
            print("PostgreSQL: skipped (no --postgresql-url or CLEARINGHOUSE_TEST_DATABASE_URL)")
        else:
            url, drop = fresh_postgresql_database(args.postgresql_url)
            try:
                ok = bench_backend(url, args.records, args.keep, args.warm) and ok
            finally:
                drop()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
