"""Benchmark: FindDocuments on a registry of one million DocumentEntries, answered from indexes.

Requirement (issue 8): "FindDocuments and GetSubmissionSetAndContents must be answered from
indexes, never a table scan; ... p99 under 25 ms and within 3x of the bare indexed SQL lookup".

Creates a throw-away schema in PostgreSQL, applies the real migrations, and loads N DocumentEntries
(default 1,000,000; ``--per-patient`` of them per patient, each patient's documents in one
SubmissionSet with its HasMember associations, plus their eventCode / confidentialityCode /
authorPerson values): the rows are generated inside PostgreSQL (INSERT ... SELECT over
generate_series) from the XML of a real sample submission resolved by the registry's own code.

Then, for random patients, it times in the same run, interleaved:

- FindDocuments (LeafClass, status Approved) end to end as the ITI-18 SOAP handler runs it, without
  the envelope and the network: ``registry.api.stored_query_xml`` (request parsing, pool check-out,
  the SELECT with the merged-patient subquery, the AdhocQueryResponse as the bytes the SOAP Body
  carries);
- the bare indexed SQL lookup it rests on: the SQL that answers the same question -- the
  DocumentEntry rows (every column, XML included) of the patient and the identifiers merged into
  it, with the status and entry type asked for, in the same order -- on a held psycopg cursor;
- for information (not judged), the same query as a SOAP 1.2 envelope posted to the registry's
  endpoint in process (WSGI: envelope checks, dispatch, the response envelope; no TLS/HTTP);
- GetSubmissionSetAndContents for the same patient's SubmissionSet, for reference;

and prints p50 / p99 of each, the ratios to the bare lookup, the CPU time per query of this process
and of the PostgreSQL backends it talks to (from /proc: a local server only; unlike latency it does
not grow with the machine's load), the median cost of each stage of FindDocuments (where the time
goes), and EXPLAIN of the statements (a plan with a sequential scan of registry_objects fails the run).
``--rounds N`` repeats the measurement N times in one process and prints every round and the median
of the rounds (figures on a shared machine are noisy).
Exit code 0 on PASS (judged on the median of the rounds).

    .venv/bin/python bench/registry_find_documents.py [--documents 1000000] [--per-patient 10]
        [--queries 2000] [--rounds 1] [--database-url postgresql://postgres@127.0.0.1:5432/test]
        [--keep | --reuse SCHEMA]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import xds_samples as xs  # noqa: E402  (test helpers: tests/xds_samples.py)
from lxml import etree  # noqa: E402
from sqlalchemy import Engine, event, text  # noqa: E402

from clearinghouse import db  # noqa: E402
from clearinghouse.config import Settings  # noqa: E402
from clearinghouse.peer import Peer  # noqa: E402
from clearinghouse.soap import envelope as soapenv  # noqa: E402
from clearinghouse.soap.client import WsgiTransport  # noqa: E402
from registry import api, queries  # noqa: E402
from registry import metadata as md  # noqa: E402
from registry.service import ITI18_ACTION, registry_endpoint  # noqa: E402

P99_LIMIT_MS = 25.0
RATIO_LIMIT = 3.0
DEFAULT_URL = os.environ.get("CLEARINGHOUSE_TEST_DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/test"
AFFINITY = "1.3.6.1.4.1.19376.3.840.1.1.1"
BATCH = 100_000
# The consumer the in-process SOAP calls come from (the endpoint checks its role, as over TLS).
BENCH_CONSUMER = Peer("CN=bench-phr", "", "bench-phr", frozenset({"consumer"}))


# --------------------------------------------------------------------------- data


def templates() -> dict[str, str]:
    """The stored XML of one resolved sample submission, with placeholders the SQL fills in."""
    patient = xs.patient_cx("@PATIENT@")
    doc = xs.DocSpec(unique_id="2.25.4242", author_person="^Author@AUTHOR@^Pat^^^^^^&1.2.3&ISO")
    request = xs.submission(patient, [doc], ss_unique_id="2.25.4343")
    sub = md.parse_submission(request)
    resolved = md.resolve_submission(sub, md.id_mapping(sub), now="20240105110000")
    de, ss, assoc = resolved.document_entries[0], resolved.submission_set, resolved.associations[0]
    assert ss is not None
    out = {}
    for name, obj, marks in (
        ("de", de, {de.id: "@DE@", "2.25.4242": "@DEUID@"}),
        ("ss", ss, {ss.id: "@SS@", "2.25.4343": "@SSUID@"}),
        ("assoc", assoc, {assoc.id: "@AS@", de.id: "@DE@", ss.id: "@SS@"}),
    ):
        xml = md.to_text(obj.element)
        for value, mark in marks.items():
            xml = xml.replace(value, mark)
        assert "\t" not in xml and "\\" not in xml
        out[name] = xml
    return out


def _sql_uuid(prefix: str, expr: str) -> str:
    return f"('urn:uuid:' || md5('{prefix}' || ({expr})::text)::uuid::text)"


def _filled(template: str, marks: dict[str, str]) -> str:
    """SQL that replaces each placeholder of ``template`` by an SQL expression."""
    sql = template
    for mark, expr in marks.items():
        sql = f"replace({sql}, '{mark}', {expr})"
    return sql


def _patient_sql(expr: str) -> str:
    return f"(md5('patient' || ({expr})::text) || '^^^&{AFFINITY}&ISO')"


def load(engine: Engine, documents: int, per_patient: int) -> int:
    """Generate the registry rows inside PostgreSQL; returns the number of patients."""
    t = templates()
    patients_n = (documents + per_patient - 1) // per_patient
    de_uuid, ss_uuid, as_uuid = _sql_uuid("de", "i"), _sql_uuid("ss", "i / :per"), _sql_uuid("as", "i")
    patient = _patient_sql("i / :per")
    de_uid = "'2.25.' || (1000000000 + i)::text"
    de_xml = _filled(
        ":de",
        {
            "@DE@": de_uuid,
            "@DEUID@": de_uid,
            "@PATIENT@": "md5('patient' || (i / :per)::text)",
            "@AUTHOR@": "(i % 997)::text",
            "@SS@": ss_uuid,
        },
    )
    event = f"CASE WHEN i % 2 = 0 THEN '{xs.EVENT_CT.key}' ELSE '{xs.EVENT_MR.key}' END"
    author = "'^Author' || (i % 997)::text || '^Pat^^^^^^&1.2.3&ISO'"
    statements = [
        (
            "documents",
            f"""INSERT INTO registry_objects (entry_uuid, object_type, entry_type, unique_id, unique_id_claim,
                patient_id, status, submission_set_uuid, mime_type, creation_time, service_start_time,
                service_stop_time,
                class_code, type_code, format_code, practice_setting_code, healthcare_facility_type_code,
                repository_unique_id, hash, size, lid, version, submitted_by, created_at, xml)
            SELECT {de_uuid}, 'DocumentEntry', '{md.STABLE_DOCUMENT_ENTRY}', {de_uid}, {de_uid}, {patient},
                '{md.APPROVED}', {ss_uuid}, 'application/dicom',
                to_char(timestamp '2020-01-01' + (i % 1500) * interval '1 day', 'YYYYMMDDHH24MISS'),
                '20240105100000', '20240105101500', '{xs.CLASS_IMAGES.key}', '{xs.TYPE_IMAGING_STUDY.key}',
                CASE WHEN i % 3 = 0 THEN '{xs.FORMAT_PDF.key}' ELSE '{xs.FORMAT_KOS.key}' END,
                '{xs.PRACTICE_RADIOLOGY.key}', '{xs.FACILITY_OUTPATIENT.key}', '{xs.REPOSITORY_UNIQUE_ID}',
                md5(i::text) || '00000000', 1000 + i, {de_uuid}, 1, 'bench-edge',
                timestamptz '2024-01-01' + i * interval '1 second', {de_xml}
            FROM generate_series(:lo, :hi - 1) AS i""",
            documents,
        ),
        (
            "memberships",
            f"""INSERT INTO registry_objects (entry_uuid, object_type, patient_id, status, submission_set_uuid, lid,
                version, submitted_by, created_at, xml)
            SELECT {as_uuid}, 'Association', NULL, '{md.APPROVED}', {ss_uuid}, {as_uuid}, 1, 'bench-edge',
                timestamptz '2024-01-01' + i * interval '1 second',
                replace(replace(replace(:assoc, '@AS@', {as_uuid}), '@DE@', {de_uuid}), '@SS@', {ss_uuid})
            FROM generate_series(:lo, :hi - 1) AS i""",
            documents,
        ),
        (
            "association ends",
            f"""INSERT INTO registry_associations (entry_uuid, source_uuid, target_uuid, assoc_type)
            SELECT {as_uuid}, {ss_uuid}, {de_uuid}, '{md.HAS_MEMBER}' FROM generate_series(:lo, :hi - 1) AS i""",
            documents,
        ),
        (
            "query values",
            f"""INSERT INTO registry_values (entry_uuid, kind, value)
            SELECT {de_uuid}, v.kind, v.value FROM generate_series(:lo, :hi - 1) AS i,
                LATERAL (VALUES ('eventCode', {event}), ('confidentialityCode', '{xs.CONFIDENTIALITY_NORMAL.key}'),
                                ('authorPerson', {author})) AS v(kind, value)""",
            documents,
        ),
    ]
    ss_stmt = f"""INSERT INTO registry_objects (entry_uuid, object_type, unique_id, unique_id_claim, patient_id, status,
            submission_set_uuid, submission_time, source_id, content_type_code, lid, version, submitted_by,
            created_at, xml)
        SELECT {_sql_uuid("ss", "p")}, 'SubmissionSet', '2.25.' || (2000000000 + p)::text,
            '2.25.' || (2000000000 + p)::text, {_patient_sql("p")}, '{md.APPROVED}', {_sql_uuid("ss", "p")},
            '20240105110000', '{xs.SOURCE_ID}', '{xs.CONTENT_TYPE_IMAGES.key}', {_sql_uuid("ss", "p")}, 1,
            'bench-edge', timestamptz '2024-01-01' + p * interval '1 second',
            replace(replace(replace(:ss, '@SS@', {_sql_uuid("ss", "p")}), '@SSUID@', '2.25.' || (2000000000 + p)::text),
                '@PATIENT@', md5('patient' || p::text))
        FROM generate_series(:lo, :hi - 1) AS p"""
    patient_stmt = f"""INSERT INTO registry_patient (patient_id, status, merged_into, created_at, updated_at)
        SELECT {_patient_sql("p")}, 'active', NULL, now(), now() FROM generate_series(:lo, :hi - 1) AS p"""
    params = {"per": per_patient, **t}
    for label, stmt, total in [
        ("patients", patient_stmt, patients_n),
        ("submission sets", ss_stmt, patients_n),
        *statements,
    ]:
        started = time.perf_counter()
        for lo in range(0, total, BATCH):
            with engine.begin() as conn:
                conn.execute(text(stmt), {**params, "lo": lo, "hi": min(total, lo + BATCH)})
        print(f"  loaded {total:>9,} {label:<17} in {time.perf_counter() - started:6.1f} s", flush=True)
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))
    return patients_n


# --------------------------------------------------------------------------- measurement


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


BARE_SQL = (
    "SELECT * FROM registry_objects WHERE patient_id IN "
    "(SELECT patient_id FROM registry_patient WHERE merged_into = %(p)s UNION ALL SELECT %(p)s) "
    "AND object_type = 'DocumentEntry' AND status = %(status)s AND entry_type = %(type)s "
    "ORDER BY created_at, entry_uuid LIMIT 1001"
)


def bare_params(patient: str) -> dict[str, str]:
    return {"p": patient, "status": md.APPROVED, "type": md.STABLE_DOCUMENT_ENTRY}


LABELS = (
    ("FindDocuments end to end (api, response bytes)", "find"),
    ("bare indexed SELECT (psycopg)", "bare"),
    ("ITI-18 via the SOAP endpoint (WSGI, no TLS)", "soap"),
    ("GetSubmissionSetAndContents (api)", "contents"),
)
RATIOS = (("FindDocuments / bare", "ratio"), ("SOAP endpoint / bare (information)", "soap ratio"))
CPU_LABELS = (("FindDocuments", "cpu find"), ("bare SELECT", "cpu bare"), ("SOAP endpoint", "cpu soap"))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _backend_cpu(pids: set[int]) -> float:
    """CPU seconds (user + system) the PostgreSQL server processes ``pids`` have used so far."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # not on this machine, or gone
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return total / CLOCK_TICKS


class CpuMeter:
    """CPU time of the work in its ``with`` blocks: this process's, and that of the PostgreSQL backends
    it talks to (from /proc, so only with a local server). Unlike wall-clock latency, it does not grow
    when other work shares the cores; backend figures are sums of 10 ms ticks, meaningful over many calls."""

    def __init__(self, name: str, backends: dict[str, set[int]]) -> None:
        self.pids = backends["bare" if name == "bare" else "pool"]
        self.own = self.server = 0.0

    def __enter__(self) -> None:
        self._own, self._server = time.process_time(), _backend_cpu(self.pids)

    def __exit__(self, *exc: object) -> None:
        self.own += time.process_time() - self._own
        self.server += _backend_cpu(self.pids) - self._server

    def per_call(self, calls: int) -> tuple[float, float]:
        return self.own * 1000 / calls, self.server * 1000 / calls


def stages(sessions: object, settings: Settings, patients: list[str], cur: object) -> list[tuple[str, float]]:
    """Median cost of each stage of FindDocuments, run one by one as registry.api runs them."""
    times: dict[str, list[float]] = {}

    def stage(name: str, fn: Callable[[], object]) -> object:
        started = time.perf_counter()
        out = fn()
        times.setdefault(name, []).append((time.perf_counter() - started) * 1000)
        return out

    for patient in patients:
        request = xs.find_documents(patient)
        req = stage("parse the AdhocQueryRequest", lambda r=request: queries.parse_request(r))
        session_scope = api._read_session(sessions)  # noqa: SLF001 - the bench times the API's own parts
        session = stage("pool check-out (ping only if idle >= 1 s)", session_scope.__enter__)
        try:
            result = stage(
                "the SELECT through SQLAlchemy, rows fetched",
                lambda s=session, q=req: queries.run(
                    s, q, max_results=settings.query_max_results, home_community_id=settings.home_community_id
                ),
            )
            stage(
                "AdhocQueryResponse bytes spliced from stored XML",
                lambda s=session, r=result: queries.response_xml(s, r),
            )
        finally:
            session_scope.__exit__(None, None, None)
        stage(
            "bare SELECT, same rows (psycopg)",
            lambda p=patient: (cur.execute(BARE_SQL, bare_params(p)), cur.fetchall()),
        )
    return [(name, statistics.median(values)) for name, values in times.items()]


def executed_plans(engine: Engine, run: Callable[[], object]) -> list[tuple[str, str]]:
    """EXPLAIN of every statement ``run`` sends to the database, with the parameters it sent:
    the plans of exactly what the registry executes."""
    captured: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        if statement.lstrip().upper().startswith("SELECT") and "registry_" in statement:
            captured.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        run()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        plans = []
        for statement, parameters in captured:
            cur.execute("EXPLAIN " + statement, parameters)
            plans.append((" ".join(statement.split())[:110] + "...", "\n".join(r[0] for r in cur.fetchall())))
        raw.rollback()
        return plans
    finally:
        raw.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--documents", type=int, default=1_000_000)
    ap.add_argument("--per-patient", type=int, default=10)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=1, help="measure this many times and judge the median")
    ap.add_argument("--database-url", default=DEFAULT_URL)
    ap.add_argument("--keep", action="store_true", help="keep the schema (its name is printed)")
    ap.add_argument("--reuse", metavar="SCHEMA", help="measure again on a schema kept by --keep (implies --keep)")
    args = ap.parse_args()

    schema = args.reuse or f"bench_{uuid.uuid4().hex[:10]}"
    args.keep = args.keep or bool(args.reuse)
    admin = db.make_engine(args.database_url)
    if not args.reuse:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = db.make_engine(args.database_url, schema=schema)
    try:
        db.upgrade(engine)
        if args.reuse:
            with engine.connect() as conn:
                patients_n = conn.execute(text("SELECT count(*) FROM registry_patient")).scalar() or 0
            print(f"schema {schema}: {patients_n:,} patients already loaded")
        else:
            print(f"schema {schema}: loading {args.documents:,} DocumentEntries, {args.per_patient} per patient")
            patients_n = load(engine, args.documents, args.per_patient)
        with engine.connect() as conn:
            size = conn.execute(text("SELECT pg_size_pretty(pg_total_relation_size('registry_objects'))")).scalar()
        print(f"  registry_objects: {size} with its indexes")

        sessions = db.session_factory(engine)
        settings = Settings()
        backends: dict[str, set[int]] = {"pool": set(), "bare": set()}

        @event.listens_for(engine, "connect")
        def _pool_backend(dbapi_connection, _record) -> None:  # noqa: ANN001
            with dbapi_connection.cursor() as c:
                c.execute("SELECT pg_backend_pid()")
                backends["pool"].add(c.fetchone()[0])
            dbapi_connection.commit()  # leave it idle, as the pool expects

        engine.dispose()  # the pool reconnects, and records its backends
        raw = engine.raw_connection()
        cur = raw.cursor()
        cur.execute("SELECT pg_backend_pid()")
        backends["bare"].add(cur.fetchone()[0])
        rng = random.Random(8)

        def ids(p: int) -> tuple[str, str]:
            with engine.connect() as conn:
                patient = conn.execute(text(f"SELECT {_patient_sql(':p')}"), {"p": p}).scalar()
                ss = conn.execute(text(f"SELECT {_sql_uuid('ss', ':p')}"), {"p": p}).scalar()
            return patient, ss

        def find_end_to_end(request: etree._Element) -> bytes:
            # What the ITI-18 handler runs: the answer comes back as the bytes the SOAP Body carries.
            return api.stored_query_xml(sessions, settings, request)

        endpoint = WsgiTransport(registry_endpoint(settings, sessions), BENCH_CONSUMER)

        def find_via_soap(request: etree._Element) -> bytes:
            body = soapenv.to_bytes(soapenv.envelope(request, action=ITI18_ACTION, to="https://bench/xds/registry"))
            status, _type, out = endpoint.post({"Content-Type": soapenv.SOAP12_CONTENT_TYPE}, [body], len(body))
            assert status == 200
            return out.getvalue()

        for p in rng.sample(range(patients_n), min(200, patients_n)):  # warm caches and connection pool
            patient, _ss = ids(p)
            find_end_to_end(xs.find_documents(patient))
            cur.execute(BARE_SQL, bare_params(patient))
            cur.fetchall()

        rounds = []
        for r in range(args.rounds):
            pairs = [ids(rng.randrange(patients_n)) for _ in range(args.queries)]
            ms: dict[str, list[float]] = {"find": [], "bare": [], "soap": [], "contents": []}
            cpu = {key: CpuMeter(key, backends) for key in ("find", "bare", "soap")}
            counts: dict[str, list[int]] = {"find": [], "bare": [], "soap": []}
            for n, (patient, ss) in enumerate(pairs):
                request = xs.find_documents(patient)
                contents = xs.query(xs.GET_SUBMISSION_SET_AND_CONTENTS, {"$XDSSubmissionSetEntryUUID": xs.quoted(ss)})
                calls = {
                    "find": lambda r=request: find_end_to_end(r).count(b"<rim:ExtrinsicObject "),
                    "bare": lambda p=patient: (cur.execute(BARE_SQL, bare_params(p)), len(cur.fetchall()))[1],
                    "soap": lambda r=request: find_via_soap(r).count(b"<rim:ExtrinsicObject "),
                }
                # The first to read a patient's rows finds them outside PostgreSQL's buffers; take turns.
                order = list(calls)
                order = order[n % 3 :] + order[: n % 3]
                for key in order:
                    with cpu[key]:
                        started = time.perf_counter()
                        counts[key].append(calls[key]())
                        ms[key].append((time.perf_counter() - started) * 1000)
                ms["contents"].append(timed(lambda r=contents: api.stored_query_xml(sessions, settings, r)))
            assert counts["find"] == counts["bare"] == counts["soap"], "every path must return the same rows"
            figures = {key: (percentile(values, 50), percentile(values, 99)) for key, values in ms.items()}
            figures["ratio"] = (figures["find"][0] / figures["bare"][0], figures["find"][1] / figures["bare"][1])
            figures["soap ratio"] = (figures["soap"][0] / figures["bare"][0], figures["soap"][1] / figures["bare"][1])
            for key, meter in cpu.items():
                figures[f"cpu {key}"] = meter.per_call(args.queries)
            rounds.append(figures)
            load_average = os.getloadavg()[0]
            print(
                f"\nround {r + 1}: {args.queries} queries, {statistics.mean(counts['find']):.1f} documents per answer, "
                f"load average {load_average:.1f}"
            )
            print(f"{'':44}{'p50 ms':>10}{'p99 ms':>10}")
            for label, key in LABELS:
                print(f"{label:44}{figures[key][0]:>10.2f}{figures[key][1]:>10.2f}")
            for label, key in RATIOS:
                print(f"{label:44}{figures[key][0]:>9.2f}x{figures[key][1]:>9.2f}x")
            print(f"{'CPU ms per query':44}{'bench':>10}{'postgres':>10}")
            for label, key in CPU_LABELS:
                print(f"{label:44}{figures[key][0]:>10.3f}{figures[key][1]:>10.3f}")
        median = {k: tuple(statistics.median(f[k][i] for f in rounds) for i in (0, 1)) for k in rounds[0]}
        if args.rounds > 1:
            print(f"\nmedian of {args.rounds} rounds{'':22}{'p50':>10}{'p99':>10}")
            for label, key in LABELS:
                print(f"{label:44}{median[key][0]:>10.2f}{median[key][1]:>10.2f}")
            for label, key in RATIOS:
                print(f"{label:44}{median[key][0]:>9.2f}x{median[key][1]:>9.2f}x")
            for label, key in CPU_LABELS:
                print(f"{label + ' (CPU ms, bench / postgres)':44}{median[key][0]:>10.3f}{median[key][1]:>10.3f}")
        print("\nwhere FindDocuments spends its time (median ms over 300 patients):")
        for stage, ms in stages(sessions, settings, [ids(rng.randrange(patients_n))[0] for _ in range(300)], cur):
            print(f"  {stage:50}{ms:>8.3f}")
        raw.rollback()
        raw.close()

        print()
        seq_scans = []
        patient, ss = pairs[0]
        contents = xs.query(xs.GET_SUBMISSION_SET_AND_CONTENTS, {"$XDSSubmissionSetEntryUUID": xs.quoted(ss)})
        for label, request in (
            ("FindDocuments", xs.find_documents(patient)),
            ("GetSubmissionSetAndContents", contents),
        ):
            for statement, plan in executed_plans(engine, lambda r=request: api.stored_query(sessions, settings, r)):
                print(f"EXPLAIN ({label}) {statement}\n" + "\n".join("    " + line for line in plan.splitlines()))
                if "Seq Scan on registry_" in plan:
                    seq_scans.append(label)

        p99 = median["find"][1]
        r50, r99 = median["ratio"]
        checks = [
            (p99 < P99_LIMIT_MS, f"FindDocuments p99 {p99:.2f} ms < {P99_LIMIT_MS} ms"),
            (r50 <= RATIO_LIMIT, f"FindDocuments p50 within {RATIO_LIMIT}x of the bare lookup ({r50:.2f}x)"),
            (r99 <= RATIO_LIMIT, f"FindDocuments p99 within {RATIO_LIMIT}x of the bare lookup ({r99:.2f}x)"),
            (not seq_scans, f"no sequential scan of the registry tables ({', '.join(seq_scans) or 'none'})"),
        ]
        print()
        for ok, what in checks:
            print(("PASS " if ok else "FAIL ") + what)
        return 0 if all(ok for ok, _ in checks) else 1
    finally:
        engine.dispose()
        if args.keep:
            print(f"kept schema {schema}")
        else:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


if __name__ == "__main__":
    sys.exit(main())
