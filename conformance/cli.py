"""``clearinghouse edge send`` and ``clearinghouse phr fetch``: the reference simulators on the command line."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from clearinghouse.audit import AuditNode, SyslogTlsSink, parse_repository_url
from clearinghouse.config import load_settings
from clearinghouse.soap.client import https_client
from clearinghouse.tls import client_context
from conformance.edge import EdgeSimulator, access_sheet
from conformance.faults import EDGE_FAULTS, PHR_FAULTS, Fault
from conformance.phr import PhrSimulator
from conformance.study import collect


def _identity(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default="https://localhost:8443", help="clearinghouse HTTPS base URL")
    p.add_argument("--ca", required=True, help="CA certificate that issued the clearinghouse's server certificate")
    p.add_argument("--cert", required=True, help="this participant's certificate (PEM)")
    p.add_argument("--key", required=True, help="this participant's private key (PEM)")
    p.add_argument("--affinity-domain-oid", help="assigning authority of RSNA-IDs (default: configured)")
    p.add_argument("--audit", help="audit record repository, syslog+tls://host:6514 (default: no audit)")


def _audit_sink(args: argparse.Namespace, source_id: str) -> SyslogTlsSink | None:
    if not args.audit:
        return None
    host, port = parse_repository_url(args.audit)
    return SyslogTlsSink(host, port, client_context(args.ca, args.cert, args.key), AuditNode(source_id=source_id))


def _closing(sink: SyslogTlsSink | None) -> None:
    if sink is not None and not sink.flush(30):
        raise RuntimeError(f"audit messages not delivered to {sink.host}:{sink.port}")
    if sink is not None:
        sink.close()


def cmd_edge_send(args: argparse.Namespace) -> int:
    settings = load_settings()
    base = args.server.rstrip("/")
    edge = EdgeSimulator(
        https_client(base + "/xds/repository", args.ca, args.cert, args.key),
        args.feed,
        client_context(args.ca, args.cert, args.key),
        affinity_domain_oid=args.affinity_domain_oid or settings.affinity_domain_oid,
        repository_unique_id=args.repository_unique_id or settings.repository_unique_id,
        faults=[Fault(f) for f in args.fault or []],
        audit=(sink := _audit_sink(args, "ISN-EDGE-SIMULATOR")),
    )
    study = collect([Path(p) for p in args.paths], Path(args.report) if args.report else None)
    sub = edge.send(study, dob=args.dob, password=args.password, access_code=args.access_code, inline=args.inline)
    _closing(sink)
    print(access_sheet(sub, base))
    return 0


def cmd_phr_fetch(args: argparse.Namespace) -> int:
    settings = load_settings()
    base = args.server.rstrip("/")
    phr = PhrSimulator(
        https_client(base + "/xds/registry", args.ca, args.cert, args.key),
        lambda _repository_id: https_client(base + "/xds/repository", args.ca, args.cert, args.key),
        affinity_domain_oid=args.affinity_domain_oid or settings.affinity_domain_oid,
        faults=[Fault(f) for f in args.fault or []],
        audit=(sink := _audit_sink(args, "ISN-PHR-SIMULATOR")),
    )
    fetched = phr.fetch(args.access_code, args.dob, args.password, Path(args.out))
    for f in fetched:
        print(f"{f.path}  {f.entry.mime_type}  {f.entry.size} bytes  SHA-1 {f.entry.sha1}  verified")
    _closing(sink)
    print(f"{len(fetched)} document(s) saved in {args.out}")
    return 0


def add_simulator_commands(sub: Any) -> None:
    from conformance.run import add_conformance_commands

    add_conformance_commands(sub)
    edge = sub.add_parser("edge", help="the reference edge simulator")
    esub = edge.add_subparsers(dest="edge_command", required=True)
    send = esub.add_parser("send", help="feed a patient and submit DICOM files or folders and a report")
    _identity(send)
    send.add_argument("--feed", default="mllp+tls://localhost:8890", help="ITI-8 address, mllp+tls://host:port")
    send.add_argument("--dob", required=True, help="patient's date of birth, YYYYMMDD")
    send.add_argument("--password", help="password the patient chose (optional)")
    send.add_argument("--access-code", help="use this access code instead of a new one")
    send.add_argument("--report", help="the report, .txt or .pdf")
    send.add_argument("--repository-unique-id", help="repositoryUniqueId to declare (default: configured)")
    send.add_argument("--inline", action="store_true", help="send documents inline (base64) instead of MTOM")
    send.add_argument(
        "--fault", action="append", choices=[f.value for f in EDGE_FAULTS], help="inject a fault (repeatable)"
    )
    send.add_argument("paths", nargs="*", help="DICOM files or folders")
    send.set_defaults(func=cmd_edge_send)

    phr = sub.add_parser("phr", help="the reference PHR simulator")
    psub = phr.add_subparsers(dest="phr_command", required=True)
    fetch = psub.add_parser("fetch", help="find and download a patient's documents, verifying their hashes")
    _identity(fetch)
    fetch.add_argument("--access-code", required=True)
    fetch.add_argument("--dob", required=True, help="date of birth, YYYYMMDD")
    fetch.add_argument("--password")
    fetch.add_argument("--out", required=True, help="folder to save the documents in")
    fetch.add_argument(
        "--fault", action="append", choices=[f.value for f in PHR_FAULTS], help="inject a fault (repeatable)"
    )
    fetch.set_defaults(func=cmd_phr_fetch)
