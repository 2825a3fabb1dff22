"""The drain path's shortcuts give exactly what the plain path gives: the rows a parse worker hands over
(``derive_payloads`` / ``rebuilt``), the chain hash from the worker's JSON (``chained_hash``), and the
hardened parser's cheap pre-checks (DTD markers, nesting depth)."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from atna_client import RFC3881_MESSAGE, edge_export
from conftest import _engine_for
from sqlalchemy import insert, select, text

from atna import store
from atna.record import (
    GENESIS_HASH,
    ROW_KEYS,
    Received,
    chained_hash,
    derive,
    derive_payloads,
    link_hash,
    prepare,
    rebuilt,
)
from clearinghouse import audit
from clearinghouse.audit import AuditNode, Party
from clearinghouse.db import Base, make_engine
from clearinghouse.xmlsafe import XmlRejected, parse_xml

NODE = AuditNode(source_id="TEST-SRC", hostname="host.example", app_name="tester", process_id="42")


def _messages() -> list[bytes]:
    """Valid DICOM and RFC 3881 messages, broken ones, and random mutations of both (as syslog messages)."""
    valid = [
        edge_export("p1^^^&1.2.3&ISO", "1.2.3.1"),
        edge_export("p2^^^&1.2.3&ISO", "1.2.3.2", outcome=audit.SERIOUS_FAILURE),
        audit.syslog_message(
            audit.registry_stored_query(
                node=NODE,
                consumer=Party("phr"),
                registry=Party("reg"),
                query_id="urn:uuid:1",
                query=b"<q/>",
                patient_id="p",
            ).to_xml(),
            NODE,
        ),  # fmt: skip
        audit.syslog_message(RFC3881_MESSAGE, NODE),
        audit.syslog_message(
            audit.node_authentication_failure(
                node=NODE, endpoint="tls://h:1", peer=Party("CN=x\x00y"), reason="nope"
            ).to_xml(),
            NODE,
        ),
    ]
    broken = [
        b"not syslog at all",
        audit.syslog_message(b"<AuditMessage/>", NODE),
        audit.syslog_message(b'<!DOCTYPE x [<!ENTITY e "b">]><AuditMessage/>', NODE),
        audit.syslog_message(b"<AuditMessage>" + b"<a>" * 40 + b"</a>" * 40 + b"</AuditMessage>", NODE),
    ]
    rnd = random.Random(5)
    mutated = []
    for _ in range(200):
        m = bytearray(rnd.choice(valid))
        pos = rnd.randrange(60, len(m))
        if rnd.random() < 0.5:
            del m[pos : pos + rnd.randint(1, 30)]
        else:
            m[pos:pos] = rnd.choice([b"<", b'"', b"&", b"<x/>", b' UserIsRequestor="maybe"', b"\xff", b"<!-- c -->"])
        mutated.append(bytes(m))
    return valid + broken + mutated


def _received(messages: list[bytes]) -> list[Received]:
    when = datetime(2026, 11, 23, 12, 0, 0, 123456, tzinfo=UTC)
    return [
        Received(when, "tls", "192.0.2.7", "CN=edge,O=Site", m, len(m) + (i % 3 == 0)) for i, m in enumerate(messages)
    ]


def test_worker_rows_equal_the_plain_derivation():
    recs = _received(_messages())
    payloads = [r.encode() for r in recs]
    shipped = rebuilt(derive_payloads(payloads, 32), payloads)
    assert len(shipped) == len(recs)
    assert sum(not p.values[ROW_KEYS.index("valid")] for p in shipped) > 100  # the corpus holds invalid records
    for rec, p in zip(recs, shipped, strict=True):
        plain = derive(rec)
        assert p.derived().row == plain.row
        assert p.index == plain.index
        assert p.raw == rec.data


def test_chain_hash_from_the_worker_json_is_the_link_hash():
    prev = GENESIS_HASH
    for n, rec in enumerate(_received(_messages()), 1):
        d = derive(rec)
        expected = link_hash(prev, {**d.row, "id": n})
        assert chained_hash(prev, n, prepare(d).tail) == expected
        prev = expected


def _empty_store(backend: str, path: str):  # noqa: ANN202
    """An engine on an empty set of ATNA tables: a SQLite file, or a fresh PostgreSQL schema."""
    engine, cleanup = _engine_for(backend)
    engine = engine or make_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine, tables=[store.RECORD, store.INDEX, store.CHAIN, store.CHECKPOINT])
    with engine.begin() as conn:
        conn.execute(insert(store.CHAIN).values(id=1, last_id=0, last_hash=GENESIS_HASH))
    return engine, cleanup


def test_prepared_and_derived_appends_store_the_same_rows(tmp_path, backend):
    """Through the real store: a batch appended as worker output and the same batch appended from plain
    derivations give identical rows and index entries, and the chain verifies."""
    recs = _received(_messages())
    payloads = [r.encode() for r in recs]
    results = []
    for n in range(2):
        engine, cleanup = _empty_store(backend, str(tmp_path / f"{n}.db"))
        try:
            with engine.begin() as conn:
                batch = rebuilt(derive_payloads(payloads, 32), payloads) if n == 0 else [derive(r) for r in recs]
                assert store.append(conn, batch, ("spool", 1, 10)) == (1, len(recs))
            assert store.verify(engine).intact
            with engine.connect() as conn:
                rows = conn.execute(select(store.RECORD).order_by(store.RECORD.c.id)).all()
                index = conn.execute(select(store.INDEX).order_by(*store.INDEX.c)).all()
            results.append(([tuple(r) for r in rows], [tuple(i) for i in index]))
        finally:
            engine.dispose()
            if cleanup:
                admin, schema = cleanup
                with admin.begin() as conn:
                    conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
                admin.dispose()
    assert results[0] == results[1]
    assert len(results[0][0]) == len(recs)


def test_parser_prechecks_still_refuse_dtds_and_deep_documents():
    with pytest.raises(XmlRejected, match="document type declarations"):
        parse_xml(b'<!DOCTYPE a [<!ENTITY e "x">]><a>&e;</a>', max_bytes=1000, max_depth=8)
    with pytest.raises(XmlRejected, match="document type declarations"):
        parse_xml(b"<a/><! doctype a>", max_bytes=1000, max_depth=8)
    deep = b"<a>" * 9 + b"</a>" * 9
    with pytest.raises(XmlRejected, match="nesting depth 9 exceeds the limit of 8"):
        parse_xml(deep, max_bytes=1000, max_depth=8)
    assert parse_xml(b"<a>" * 8 + b"</a>" * 8, max_bytes=1000, max_depth=8).tag == "a"
    # The "<!" pre-check only spares the expression: a declaration after other markup is still found.
    with pytest.raises(XmlRejected, match="document type declarations"):
        parse_xml(b'<?xml version="1.0"?>\n<!--x-->\n<!ENTITY e "x"><a/>', max_bytes=1000, max_depth=8)
    assert parse_xml(b"<a><!-- <b/> --><![CDATA[<]]></a>", max_bytes=1000, max_depth=8).tag == "a"
