"""``clearinghouse conformance run``: the right feature files for a role, with JUnit XML and a
self-contained HTML report."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

SUITES = {"clearinghouse": "conformance.suites.test_clearinghouse"}


def pytest_command(role: str, out: Path, target_options: list[str]) -> list[str]:
    if role not in SUITES:
        raise ValueError(f"unknown role {role!r}; roles with a suite: {', '.join(sorted(SUITES))}")
    out.mkdir(parents=True, exist_ok=True)
    return [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "conformance.plugin",
        "-p",
        "no:cacheprovider",
        "--rootdir",
        str(Path(__file__).resolve().parents[1]),
        "--pyargs",
        SUITES[role],
        f"--junitxml={out / 'junit.xml'}",
        f"--html={out / 'report.html'}",
        "--self-contained-html",
        "-o",
        "junit_family=xunit2",
        "-q",
        *target_options,
    ]


def cmd_conformance_run(args: argparse.Namespace) -> int:
    options: list[str] = []
    for flag in ("target", "feed", "ca", "cert", "key", "source_cert", "source_key", "consumer_cert", "consumer_key"):
        value = getattr(args, flag)
        if value:
            options.append(f"--ch-{flag.replace('_', '-')}={value}")
    out = Path(args.out)
    result = subprocess.run(pytest_command(args.role, out, options), check=False)
    print(f"JUnit XML: {out / 'junit.xml'}\nHTML report: {out / 'report.html'}")
    return result.returncode


def add_conformance_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    conf = sub.add_parser("conformance", help="the conformance suite")
    csub = conf.add_subparsers(dest="conformance_command", required=True)
    run = csub.add_parser("run", help="run a role's scenarios and write JUnit XML and an HTML report")
    run.add_argument("--role", required=True, choices=sorted(SUITES))
    run.add_argument("--target", help="clearinghouse HTTPS base URL (default: start this project's own)")
    run.add_argument("--feed", help="its ITI-8 feed, mllp+tls://host:port")
    run.add_argument("--ca", help="CA certificate of the target's server certificate")
    run.add_argument("--cert", help="a certificate registered at the target with roles source and consumer")
    run.add_argument("--key")
    run.add_argument("--source-cert")
    run.add_argument("--source-key")
    run.add_argument("--consumer-cert")
    run.add_argument("--consumer-key")
    run.add_argument("--out", default="conformance-report", help="folder for junit.xml and report.html")
    run.set_defaults(func=cmd_conformance_run)
