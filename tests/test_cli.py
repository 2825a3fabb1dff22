"""The ``clearinghouse`` command as a user runs it: serve, participants, rsna-id, db upgrade."""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import edge
import pytest
from cryptography.hazmat.primitives.serialization import pkcs12
from serve_output import wait_for_endpoints

from clearinghouse import pki
from clearinghouse.mllp import MllpClient
from clearinghouse.rsna_id import compute_rsna_id
from clearinghouse.tls import client_context

CLI = [sys.executable, "-m", "clearinghouse.cli"]


def run(*args: str, home: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [*CLI, *args] + (["--home", str(home)] if home else [])
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_rsna_id_prints_the_id_and_the_cx_patient_id():
    out = run("rsna-id", "--access-code", "XDE3C-31BRS-TM7J8-BKHZC", "--dob", "19700412", "--password", "pw").stdout
    rsna, cx = out.split()
    assert rsna == compute_rsna_id("xde3c31brstm7j8bkhzc", "19700412", "pw")
    assert cx == f"{rsna}^^^&1.3.6.1.4.1.19376.3.840.1.1.1&ISO"
    bad = run("rsna-id", "--access-code", "abc", "--dob", "19701340", check=False)
    assert bad.returncode == 2 and "error" in bad.stderr


def _connects(port: int, ctx: ssl.SSLContext) -> bool:
    try:
        with (
            socket.create_connection(("localhost", port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(b"GET /xds/registry?wsdl HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return tls.recv(12).startswith(b"HTTP/1.1 200")
    except (ssl.SSLError, OSError):
        return False


def test_serve_participants_and_clean_shutdown(tmp_path):
    home, out = tmp_path / "home", tmp_path / "certs"
    added = run(
        "participants", "add", "site-edge", "--role", "source", "--role", "consumer", "--out", str(out), home=home
    ).stdout
    assert "site-edge" in added
    for name in ("site-edge.key.pem", "site-edge.cert.pem", "ca.cert.pem", "site-edge.p12"):
        assert (out / name).exists()
    assert (out / "site-edge.key.pem").stat().st_mode & 0o077 == 0
    password = (out / "site-edge.p12.password").read_text().strip().encode()
    key, cert, extra = pkcs12.load_key_and_certificates((out / "site-edge.p12").read_bytes(), password)
    assert (
        key is not None
        and cert.subject.rfc4514_string().endswith("CN=site-edge")
        or "CN=site-edge" in cert.subject.rfc4514_string()
    )
    assert len(extra) == 1  # the CA

    other_ca = pki.create_ca("Site B CA")
    imported = pki.issue_certificate(other_ca, "site-b-phr")
    (tmp_path / "b.cert.pem").write_bytes(imported.cert_pem)
    pki.write_private(tmp_path / "b.key.pem", imported.key_pem)
    run("participants", "import", "site-b", "--cert", str(tmp_path / "b.cert.pem"), "--role", "consumer", home=home)
    dup = run(
        "participants",
        "import",
        "site-b2",
        "--cert",
        str(tmp_path / "b.cert.pem"),
        "--role",
        "consumer",
        home=home,
        check=False,
    )
    assert dup.returncode == 2 and "already registered" in dup.stderr
    bad_role = run("participants", "add", "x", "--role", "wizard", "--out", str(out), home=home, check=False)
    assert bad_role.returncode == 2 and "wizard" in bad_role.stderr

    env = {**os.environ, "CLEARINGHOUSE_HOME": str(home)}
    proc = subprocess.Popen(
        [*CLI, "serve", "--https-port", "0", "--feed-port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        endpoints = wait_for_endpoints(proc)
        assert endpoints["CA certificate"] == str((home / "pki" / "ca.cert.pem").resolve())
        https_port = int(re.search(r":(\d+)/xds/registry", endpoints["ITI-42/ITI-18 registry"]).group(1))
        assert endpoints["ITI-41/ITI-43 repository"] == f"https://127.0.0.1:{https_port}/xds/repository"
        feed_port = int(endpoints["ITI-8 patient identity feed (MLLP/TLS)"].rsplit(":", 1)[1])

        ctx = client_context(out / "ca.cert.pem", out / "site-edge.cert.pem", out / "site-edge.key.pem")
        assert _connects(https_port, ctx)
        client = MllpClient("localhost", feed_port, ctx)
        patient = edge.patient_for(edge.new_access_code(), "19991231")
        assert b"MSA|AA|" in client.send(edge.feed_message(patient))
        client.close()

        b_ctx = client_context(home / "pki" / "ca.cert.pem", tmp_path / "b.cert.pem", tmp_path / "b.key.pem")
        assert _connects(https_port, b_ctx)

        listing = run("participants", "list", home=home).stdout
        assert re.search(r"site-edge\s+consumer,source\s+issued\s+active", listing)
        assert re.search(r"site-b\s+consumer\s+imported\s+active", listing)
        run("participants", "revoke", "site-edge", home=home)
        assert re.search(r"site-edge\s+\S+\s+issued\s+revoked", run("participants", "list", home=home).stdout)
        assert not _connects(https_port, ctx)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=15) == 0
        finally:
            proc.kill()
    stderr = proc.stderr.read()
    assert "CN=site-edge" in stderr and "revoked" in stderr  # the refusal was logged with the subject


def test_db_upgrade_is_idempotent(tmp_path):
    for _ in range(2):
        assert "up to date" in run("db", "upgrade", home=tmp_path / "h").stdout


@pytest.mark.parametrize("args", [["serve", "--https-port", "notanumber"], ["participants"], []])
def test_usage_errors(args):
    assert run(*args, check=False).returncode == 2
