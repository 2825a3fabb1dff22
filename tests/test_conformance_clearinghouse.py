"""Our own clearinghouse under the conformance suite's clearinghouse-role scenarios."""

import subprocess
import sys
import xml.etree.ElementTree as ET

from conformance.suites.test_clearinghouse import *  # noqa: F403 - binds the scenarios and their steps


def test_conformance_run_against_a_remote_target_writes_reports_and_can_fail(clearinghouse, tmp_path):
    edge, phr = clearinghouse.identities["edge"], clearinghouse.identities["phr"]
    common = [
        sys.executable, "-m", "clearinghouse.cli", "conformance", "run", "--role", "clearinghouse",
        "--feed", f"mllp+tls://localhost:{clearinghouse.feed_port}", "--ca", str(edge.ca),
        "--source-cert", str(edge.cert), "--source-key", str(edge.key),
        "--consumer-cert", str(phr.cert), "--consumer-key", str(phr.key),
    ]  # fmt: skip
    ok = subprocess.run(
        [*common, "--target", f"https://localhost:{clearinghouse.https_port}", "--out", str(tmp_path / "ok")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr
    suite = ET.parse(tmp_path / "ok" / "junit.xml").getroot().find("testsuite")
    assert int(suite.get("tests")) == 16 and int(suite.get("failures")) == 0 and int(suite.get("skipped")) == 0
    html = (tmp_path / "ok" / "report.html").read_text()
    assert "<html" in html.lower() and "test_a_wrong_password_finds_nothing" in html

    # Nothing listens there: every scenario that talks to the clearinghouse must fail, none may pass.
    bad = subprocess.run(
        [*common, "--target", "https://localhost:1", "--out", str(tmp_path / "bad")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode != 0
    failed = ET.parse(tmp_path / "bad" / "junit.xml").getroot().find("testsuite")
    assert int(failed.get("failures")) + int(failed.get("errors")) >= 14
