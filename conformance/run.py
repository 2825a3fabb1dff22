"""``clearinghouse conformance run`` (the right feature files for a role, with JUnit XML and a
self-contained HTML report) and ``clearinghouse conformance session new|list|show|close``."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

SUITES = {
    "clearinghouse": "conformance.suites.test_clearinghouse",
    "edge": "conformance.suites.test_edge",
    "phr": "conformance.suites.test_phr",
}
TARGET_FLAGS = ("target", "feed", "ca", "cert", "key", "source_cert", "source_key", "consumer_cert", "consumer_key")


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
        "--tb=short",
        *target_options,
    ]


def run_options(args: argparse.Namespace) -> list[str]:
    """The pytest options of ``conformance run``'s flags."""
    options: list[str] = []
    if args.role == "clearinghouse":
        for flag in TARGET_FLAGS:
            value = getattr(args, flag)
            if value:
                options.append(f"--ch-{flag.replace('_', '-')}={value}")
        return options
    if not args.session:
        raise ValueError(f"--role {args.role} judges a recorded session: give --session ID")
    options += [f"--conformance-session={args.session}", f"--conformance-timeout={args.timeout}"]
    for flag in ("home", "database_url"):
        value = getattr(args, flag)
        if value:
            options.append(f"--ch-{flag.replace('_', '-')}={value}")
    return options


def cmd_conformance_run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    result = subprocess.run(pytest_command(args.role, out, run_options(args)), check=False)
    print(f"JUnit XML: {out / 'junit.xml'}\nHTML report: {out / 'report.html'}")
    return result.returncode


def add_conformance_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from conformance.session_cli import add_session_commands

    conf = sub.add_parser("conformance", help="the conformance suite")
    csub = conf.add_subparsers(dest="conformance_command", required=True)
    run = csub.add_parser("run", help="run a role's scenarios and write JUnit XML and an HTML report")
    run.add_argument("--role", required=True, choices=sorted(SUITES))
    run.add_argument("--target", help="clearinghouse role: HTTPS base URL (default: start this project's own)")
    run.add_argument("--feed", help="clearinghouse role: its ITI-8 feed, mllp+tls://host:port")
    run.add_argument("--ca", help="clearinghouse role: CA certificate of the target's server certificate")
    run.add_argument("--cert", help="clearinghouse role: a certificate registered with roles source and consumer")
    run.add_argument("--key")
    run.add_argument("--source-cert")
    run.add_argument("--source-key")
    run.add_argument("--consumer-cert")
    run.add_argument("--consumer-key")
    run.add_argument("--session", help="edge and phr roles: the conformance session to judge")
    run.add_argument(
        "--timeout", type=float, default=300.0, help="edge and phr roles: seconds to wait for the system under test"
    )
    run.add_argument("--home", help="edge and phr roles: the clearinghouse's data directory")
    run.add_argument("--database-url", help="edge and phr roles: the clearinghouse's database")
    run.add_argument("--out", default="conformance-report", help="folder for junit.xml and report.html")
    run.set_defaults(func=cmd_conformance_run)
    add_session_commands(csub)
