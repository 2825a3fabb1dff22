"""FindDocuments and GetSubmissionSetAndContents are answered from indexes (PostgreSQL).

Every SELECT the registry sends while answering the two queries is captured and EXPLAINed with
the parameters it was sent with, sequential scans disabled: PostgreSQL then still plans a
sequential scan (or an unconditioned index walk) where no index can answer a statement, so a plan
whose every scan has an index condition proves an index serves every step. The million-row plans
and figures come from bench/registry_find_documents.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from sqlalchemy import event

from registry import api
from tests import xds_samples as xs
from tests.registry_db import register, row, uuid_of

pytest_plugins = ("tests.registry_db",)


def _plans(engine, sessions, settings, request) -> list[tuple[str, str]]:  # noqa: ANN001
    captured: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        if statement.lstrip().upper().startswith("SELECT") and "registry_" in statement:
            captured.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        api.stored_query(sessions, settings, request)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        # With sequential scans disabled PostgreSQL still plans one where no index can serve.
        cur.execute("SET enable_seqscan = off")
        plans = []
        for statement, parameters in captured:
            cur.execute("EXPLAIN " + statement, parameters)
            plans.append((statement, "\n".join(r[0] for r in cur.fetchall())))
        raw.rollback()
        return plans
    finally:
        raw.close()


def _bench_loader():  # noqa: ANN202
    """The benchmark's row generator (bench/registry_find_documents.py), to give the planner a
    registry with realistic statistics: on a handful of rows any plan is as good as another."""
    path = Path(__file__).resolve().parents[1] / "bench" / "registry_find_documents.py"
    spec = importlib.util.spec_from_file_location("registry_find_documents_bench", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.load


def test_find_documents_and_submission_set_contents_use_indexes(engine, sessions, settings, patient):
    if engine.dialect.name != "postgresql":
        pytest.skip("plans are checked on PostgreSQL, the production database")
    _bench_loader()(engine, 5000, 10)  # 500 other patients, each with a SubmissionSet of 10 documents
    doc = xs.DocSpec()
    register(
        sessions,
        settings,
        xs.submission(patient, [doc, xs.DocSpec(format_code=xs.FORMAT_PDF)], folders=[xs.FolderSpec(documents=[0])]),
    )
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    ss = row(sessions, uuid_of(sessions, doc.unique_id)).submission_set_uuid
    requests = {
        "FindDocuments": xs.find_documents(
            patient,
            XDSDocumentEntryEventCodeList=xs.quoted_list([xs.EVENT_CT.key]),
            XDSDocumentEntryAuthorPerson=xs.quoted_list(["%Welby%"]),
        ),
        "GetSubmissionSetAndContents": xs.query(
            xs.GET_SUBMISSION_SET_AND_CONTENTS, {"$XDSSubmissionSetEntryUUID": xs.quoted(ss)}
        ),
    }
    # The index each query's design rests on: the patient index for FindDocuments; for the contents of
    # a SubmissionSet, the association ends leaving it, then primary keys.
    expected = {
        "FindDocuments": {"ix_registry_objects_patient"},
        "GetSubmissionSetAndContents": {"ix_registry_associations_source", "registry_objects_pkey"},
    }
    for name, request in requests.items():
        plans = _plans(engine, sessions, settings, request)
        assert plans, name
        used = "\n".join(plan for _, plan in plans)
        assert all(index in used for index in expected[name]), f"{name}: {used}"
        for statement, plan in plans:
            assert "Seq Scan" not in plan, f"{name}: {statement}\n{plan}"
            # Every index scan is driven by a condition (not a whole index walked in some order).
            scans = sum(plan.count(kind) for kind in ("Index Scan using", "Index Only Scan using", "Bitmap Index Scan"))
            assert scans and plan.count("Index Cond:") == scans, f"{name}: {statement}\n{plan}"
