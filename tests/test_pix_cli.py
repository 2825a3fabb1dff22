"""``clearinghouse pix``: domains, subscriptions and dead letters as an administrator uses them (the
real command parser, in process, on a fresh home); ``serve --pix-port`` in tests/test_pix_notify.py."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, insert, select

from clearinghouse import db
from clearinghouse.cli import main
from clearinghouse.config import load_settings
from clearinghouse.mllp import MllpClient
from clearinghouse.tls import client_context
from pix_manager import admin, notify
from pix_manager.models import PixMessage


def pix(capsys, home, *args: str) -> tuple[int, str, str]:
    code = main(["pix", *args, "--home", str(home)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_domains_and_subscriptions(tmp_path, capsys):
    code, out, _ = pix(
        capsys, tmp_path, "domains", "add", "1.2.840.99.1", "--namespace", "SITE-A", "--source", "site-a"
    )
    assert code == 0 and "SITE-A (1.2.840.99.1) fed by site-a" in out
    code, out, _ = pix(capsys, tmp_path, "domains", "list")
    assert "ISN " in out and "1.3.6.1.4.1.19376.3.840.1.1.1" in out  # the affinity domain is always there
    assert "SITE-A" in out and "site-a" in out
    code, _, err = pix(capsys, tmp_path, "domains", "add", "1.2.840.99.2", "--namespace", "SITE-A")
    assert code == 2 and "already names domain 1.2.840.99.1" in err
    code, _, err = pix(capsys, tmp_path, "domains", "add", "not-an-oid", "--namespace", "X")
    assert code == 2 and "not an ISO OID" in err

    code, out, _ = pix(
        capsys, tmp_path, "subscribe", "ehr", "--url", "mllp+tls://ehr.example:2575", "--domain", "SITE-A"
    )
    assert code == 0 and "ITI-10 to mllp+tls://ehr.example:2575 for 1.2.840.99.1" in out
    code, out, _ = pix(capsys, tmp_path, "subscriptions")
    assert "ehr" in out and "1.2.840.99.1" in out
    for bad, message in [
        (["--url", "mllp://ehr.example:2575"], "use mllp+tls://HOST:PORT"),
        (["--url", "mllp+tls://ehr.example"], "the port is required"),
        (["--url", "mllp+tls://ehr.example:2575", "--domain", "NOPE"], "'NOPE' is not a configured domain"),
    ]:
        code, _, err = pix(capsys, tmp_path, "subscribe", "bad", *bad)
        assert code == 2 and message in err
    assert pix(capsys, tmp_path, "unsubscribe", "ehr")[0] == 0
    code, _, err = pix(capsys, tmp_path, "unsubscribe", "ehr")
    assert code == 2 and "no subscription named 'ehr'" in err


def test_dead_letters_list_show_replay(tmp_path, capsys):
    pix(capsys, tmp_path, "domains", "list")  # creates the database
    engine = db.make_engine(load_settings({"home": tmp_path}).effective_database_url)
    message = b"MSH|^~\\&|ISN-PIX-MANAGER|ISN|ehr||20261123||ADT^A31^ADT_A05|CTRL42|P|2.5\rPID|||X^^^S&1.2&ISO|| \r"
    with engine.begin() as conn:
        notify.enqueue(conn, "ehr", "ITI-10", message)
        entry = admin.outbox(conn)[0]
    notifier = notify.Notifier(
        engine,
        admin.ConfigCache(),
        notify.ClientIdentity("", "", ""),
        notify.InProcessLink(lambda _p, _m: b"", None),  # type: ignore[arg-type]
        max_attempts=3,
        retry_base_seconds=0.01,
        keep_messages=timedelta(hours=1),
    )
    notifier.deliver_due()  # the subscription does not exist: a dead letter at once
    code, out, _ = pix(capsys, tmp_path, "dead-letters")
    assert code == 0 and f"{entry.id:>6} ehr" in out and "CTRL42" in out and "no subscription named 'ehr'" in out
    code, out, _ = pix(capsys, tmp_path, "dead-letters", "show", str(entry.id))
    assert "ADT^A31^ADT_A05|CTRL42" in out
    code, out, _ = pix(capsys, tmp_path, "dead-letters", "replay", str(entry.id))
    assert code == 0 and "queued again" in out
    with engine.connect() as conn:
        assert [e.status for e in admin.outbox(conn)] == ["pending"]
    code, _, err = pix(capsys, tmp_path, "dead-letters", "replay")
    assert code == 2 and "needs the entry id" in err
    engine.dispose()


@pytest.mark.parametrize("args", [["dead-letters", "replay", "999"], ["dead-letters", "show", "999"]])
def test_unknown_entries(tmp_path, capsys, args):
    code, _, err = pix(capsys, tmp_path, *args)
    assert code == 2 and "999" in err


def test_serve_listens_on_the_pix_port(tmp_path):
    """``serve --pix-port`` as a user starts it: the PIX endpoints are printed and answer."""
    home, out = tmp_path / "home", tmp_path / "edge"
    assert main(["participants", "add", "edge", "--role", "source", "--out", str(out), "--home", str(home)]) == 0
    port = free_port()
    env = {
        **os.environ,
        "CLEARINGHOUSE_HOME": str(home),
        "CLEARINGHOUSE_SYSLOG_TLS_PORT": "0",
        "CLEARINGHOUSE_SYSLOG_UDP_PORT": "0",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clearinghouse.cli",
            "serve",
            "--https-port",
            "0",
            "--feed-port",
            "0",
            "--pix-port",
            str(port),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        while not (line := proc.stdout.readline()).startswith("Register a participant"):
            assert line, f"serve exited: {''.join(lines)} {proc.stderr.read()}"
            lines.append(line)
        printed = "".join(lines)
        assert f"ITI-8/ITI-9 PIX Manager (MLLP/TLS): mllp+tls://127.0.0.1:{port}" in printed
        assert re.search(r"ITI-44/ITI-45 PIXv3 \(SOAP\): https://127\.0\.0\.1:\d+/pix/v3", printed)
        assert re.search(r"ITI-83 PIXm \(FHIR\): https://127\.0\.0\.1:\d+/fhir/Patient/\$ihe-pix", printed)
        ctx = client_context(out / "ca.cert.pem", out / "edge.cert.pem", out / "edge.key.pem")
        message = (
            b"MSH|^~\\&|EDGE|A|PIX|ISN|2026||ADT^A04^ADT_A01|S1|P|2.5\rPID|||R1^^^&1.3.6.1.4.1.19376.3.840.1.1.1&ISO\r"
        )
        with MllpClient("localhost", port, ctx) as client:
            assert b"MSA|AA|S1" in client.send(message)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=30) == 0
        finally:
            proc.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_purge_forgets_old_messages_but_keeps_dead_letters(tmp_path, capsys):
    pix(capsys, tmp_path, "domains", "list")
    engine = db.make_engine(load_settings({"home": tmp_path}).effective_database_url)
    delivered = []
    ack = b"MSH|^~\\&|REGISTRY|ISN|PIX|ISN|2026||ACK^A40^ACK|1|P|2.3.1\rMSA|AA|1\r"
    link = notify.InProcessLink(lambda _p, m: delivered.append(m) or ack, None)
    with engine.begin() as conn:
        notify.enqueue(
            conn, notify.REGISTRY_DESTINATION, "ITI-8", b"MSH|^~\\&|PIX|ISN|REG|ISN|2026||ADT^A40|1|P|2.3.1\r"
        )
        notify.enqueue(conn, "nobody", "ITI-10", b"MSH|^~\\&|PIX|ISN|X|Y|2026||ADT^A31|2|P|2.5\r")
        conn.execute(
            insert(PixMessage).values(
                sender="s",
                control_id="c",
                digest="d",
                transaction="ITI-8",
                response=b"r",
                received_at=datetime.now(UTC),
            )
        )
    notifier = notify.Notifier(
        engine,
        admin.ConfigCache(),
        notify.ClientIdentity("", "", ""),
        link,  # type: ignore[arg-type]
        max_attempts=3,
        retry_base_seconds=0.01,
        keep_messages=timedelta(0),
    )
    notifier.deliver_due()
    assert len(delivered) == 1  # the registry-bound message, through the registry's handler
    notifier.purge()
    with engine.connect() as conn:
        assert [(e.destination, e.status) for e in admin.outbox(conn)] == [("nobody", "dead")]
        assert conn.execute(select(func.count()).select_from(PixMessage)).scalar_one() == 0
    engine.dispose()
