"""Benchmark: a large ITI-41 submission must stream through the server, never held whole in memory.

Requirement: "ITI-41 attachments are streamed to disk while they arrive, never held whole in memory:
a 2 GB submission must go through with the server's resident memory under 300 MB".

Starts ``clearinghouse serve`` as a separate process on a fresh home, feeds a patient (ITI-8 over
MLLP/TLS), submits an N MiB document (streamed from disk as an MTOM part) plus a small DICOM object
(ITI-41), retrieves the big document back (ITI-43) and checks its SHA-1, while a thread samples the
server's VmRSS every 50 ms. Prints throughput and peak RSS; exit code 0 on PASS, 1 on FAIL.

Documents are stored encrypted (the default). ``--store s3`` stores them in an S3-compatible service
instead of the filesystem: ``--s3-endpoint`` of a running one (MinIO; credentials from
CLEARINGHOUSE_S3_ACCESS_KEY/_SECRET_KEY), or by default a moto server started here (moto keeps
objects in its own memory, in this process, not the server's: mind the machine's RAM for large N).

    .venv/bin/python bench/iti41_large_submission.py [--size-mb 2048] [--keep] [--dir DIR]
        [--store filesystem|s3] [--s3-endpoint URL] [--encryption aes-256-gcm|none]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
# The server and CLI run from this working tree too, whatever the state of the editable install.
CHILD_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

import edge  # noqa: E402  (test helpers: tests/edge.py)
import xds_samples as xs  # noqa: E402
from lxml import etree  # noqa: E402
from serverproc import clearinghouse_cmd, free_ports  # noqa: E402  (bench/serverproc.py)

from clearinghouse.mllp import MllpClient  # noqa: E402
from clearinghouse.soap.client import SoapReply, https_client  # noqa: E402
from clearinghouse.soap.mtom import cid_href, content_id_for  # noqa: E402
from clearinghouse.tls import client_context  # noqa: E402
from clearinghouse.xmlsafe import NS, qname  # noqa: E402

LIMIT_MIB = 300
MIB = 1 << 20


# --------------------------------------------------------------------------- server process


def wait_for_port(proc: subprocess.Popen[bytes], port: int, tls: ssl.SSLContext, timeout: float = 60.0) -> None:
    """Until ``port`` completes a TLS handshake (a bare connect would be logged as a refused handshake)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("localhost", port), timeout=5) as sock:
                tls.wrap_socket(sock, server_hostname="localhost").close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server did not listen on port {port} within {timeout:.0f} s")


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM etc. of a process, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Vm"):
            key, value = line.split(":", 1)
            out[key] = int(value.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_hwm(pid: int) -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of ``pid`` (Linux >= 4.0)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class RssSampler(threading.Thread):
    """Polls VmRSS of a process every ``interval`` seconds until stopped; keeps the peak (KiB)."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_kib = self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.peak_kib = max(self.peak_kib, proc_status(self.pid)["VmRSS"])
            except (OSError, KeyError):
                return  # the process is gone
            self.samples += 1
            self._stop_event.wait(self.interval)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak_kib


# --------------------------------------------------------------------------- test data


def make_file(path: Path, size_mib: int) -> str:
    """N MiB of pseudo-random bytes (a random 1 MiB block, rotated and stamped per chunk); its SHA-1."""
    block = os.urandom(MIB)
    sha1 = hashlib.sha1(usedforsecurity=False)
    with open(path, "wb") as fh:
        for i in range(size_mib):
            k = (i * 7919) % MIB
            chunk = bytearray(block[k:] + block[:k])
            chunk[:8] = i.to_bytes(8, "little")
            fh.write(chunk)
            sha1.update(chunk)
    return sha1.hexdigest()


def file_sha1(path: Path) -> str:
    sha1 = hashlib.sha1(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(MIB):
            sha1.update(block)
    return sha1.hexdigest()


def iti41_request(
    patient: str, big: Path, big_sha1: str, dicom: bytes
) -> tuple[etree._Element, list[tuple[str, str, object]], str]:
    """ProvideAndRegister with the big file and a DICOM object as xop:Include'd MTOM parts.

    The metadata carries the big file's real SHA-1 and size (the repository verifies them); the
    big part's source is its Path, so neither client nor server ever holds it in memory.
    """
    # Not imaging manifests: the KOS formatCode (the builder's default) would make RAD-68 rules apply.
    big_spec = xs.DocSpec(
        mime_type="application/octet-stream",
        hash=big_sha1,
        size=big.stat().st_size,
        title="Large benchmark document",
        format_code=xs.Code("urn:ihe:iti:xds:2017:mimeTypeSufficient", "1.3.6.1.4.1.19376.1.2.3", "Mime type"),
    )
    dcm_spec = xs.DocSpec(
        mime_type="application/dicom", content=dicom, title="CT_small.dcm", format_code=edge.dicom_format(dicom)
    )
    request = xs.provide_and_register(patient, [big_spec, dcm_spec])
    attachments: list[tuple[str, str, object]] = []
    sources = [(big, "application/octet-stream"), (dicom, "application/dicom")]
    for i, (doc, (source, ctype)) in enumerate(zip(request.findall("xdsb:Document", NS), sources, strict=True), 1):
        doc.text = None  # drop the inline base64 placeholder
        cid = content_id_for(i, "bench.invalid")
        etree.SubElement(doc, qname("xop", "Include"), nsmap={"xop": NS["xop"]}, href=cid_href(cid))
        attachments.append((cid, ctype, source))
    return request, attachments, big_spec.unique_id or ""


# --------------------------------------------------------------------------- benchmark


@dataclass
class Phase:
    seconds: float
    peak_kib: int  # sampled VmRSS peak
    hwm_kib: int  # kernel VmHWM at the end of the phase
    samples: int
    cpu: float  # server CPU seconds (user + system)

    @property
    def peak_mib(self) -> float:
        return max(self.peak_kib, self.hwm_kib) / 1024


def measured(pid: int, action: Callable[[], SoapReply]) -> tuple[SoapReply, Phase]:
    sampler = RssSampler(pid)
    sampler.start()
    t0, cpu0 = time.perf_counter(), cpu_seconds(pid)
    try:
        result = action()
    finally:
        seconds = time.perf_counter() - t0
        peak = sampler.stop()
    return result, Phase(seconds, peak, proc_status(pid)["VmHWM"], sampler.samples, cpu_seconds(pid) - cpu0)


def report(name: str, size: int, phase: Phase) -> None:
    mbps = size / phase.seconds / 1e6
    print(
        f"{name}: {phase.seconds:.1f} s, {mbps:.1f} MB/s, server CPU {phase.cpu:.1f} s; "
        f"peak VmRSS {phase.peak_kib / 1024:.1f} MiB ({phase.samples} samples), VmHWM {phase.hwm_kib / 1024:.1f} MiB, "
        f"peak/size {phase.peak_mib * MIB / size:.3f}"
    )


def run(size_mib: int, work: Path, env: dict[str, str] | None = None) -> tuple[float, list[str]]:
    """The benchmark proper: the server's peak RSS (MiB) and the failed checks (empty on success)."""
    home, clients = work / "home", work / "clients"
    server_env = {**CHILD_ENV, **(env or {})}
    cli = clearinghouse_cmd()
    for name, role in (("edge", "source"), ("phr", "consumer")):
        subprocess.run(
            [*cli, "participants", "add", name, "--home", str(home), "--role", role, "--out", str(clients)],
            check=True,
            stdout=subprocess.DEVNULL,
            env=CHILD_ENV,
        )
    https_port, feed_port = free_ports(2)
    log = open(work / "server.log", "wb")  # closed after the server stops
    server = subprocess.Popen(
        [*cli, "serve", "--home", str(home), "--https-port", str(https_port), "--feed-port", str(feed_port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=server_env,
    )
    failures: list[str] = []
    try:
        ca = clients / "ca.cert.pem"
        edge_tls = client_context(ca, clients / "edge.cert.pem", clients / "edge.key.pem")
        wait_for_port(server, https_port, edge_tls)
        wait_for_port(server, feed_port, edge_tls)
        print(f"server pid {server.pid} on https {https_port}, feed {feed_port}; log {work / 'server.log'}")

        t0 = time.perf_counter()
        big = work / "big.bin"
        big_sha1 = make_file(big, size_mib)
        size = big.stat().st_size
        print(f"test file: {size_mib} MiB, SHA-1 {big_sha1}, generated in {time.perf_counter() - t0:.1f} s")

        patient = edge.patient_for(edge.new_access_code(), "19700101")
        with MllpClient("localhost", feed_port, edge_tls) as feed:
            ack = feed.send(edge.feed_message(patient))
        if b"MSA|AA|" not in ack:
            raise RuntimeError(f"ITI-8 feed not accepted: {ack!r}")

        url = f"https://localhost:{https_port}/xds/repository"
        dicom = edge.dicom_bytes("CT_small.dcm")
        request, attachments, big_uid = iti41_request(patient, big, big_sha1, dicom)
        source = https_client(url, ca, clients / "edge.cert.pem", clients / "edge.key.pem", work / "edge-spool")
        baseline = proc_status(server.pid)["VmRSS"]
        print(f"server VmRSS before upload: {baseline / 1024:.1f} MiB")

        reply, up = measured(server.pid, lambda: source.call(edge.ITI41, request, attachments=attachments, mtom=True))
        status = reply.body.get("status")
        report("upload (ITI-41)", size, up)
        if status != edge.SUCCESS:
            failures.append(f"ITI-41 status {status}, errors {edge.errors_of(reply.body)}")

        consumer = https_client(url, ca, clients / "phr.cert.pem", clients / "phr.key.pem", work / "phr-spool")
        hwm_reset = reset_hwm(server.pid)
        retrieve = edge.retrieve_request([big_uid])
        reply, down = measured(server.pid, lambda: consumer.call(edge.ITI43, retrieve))
        report("download (ITI-43)" + ("" if hwm_reset else " [VmHWM not reset: lifetime peak]"), size, down)
        inc = reply.body.find("xdsb:DocumentResponse/xdsb:Document/xop:Include", NS)
        if inc is None:
            failures.append(f"ITI-43 returned no document: {edge.errors_of(reply.body)}")
        else:
            assert reply.mtom is not None
            got = reply.mtom.resolve_cid(inc.get("href", ""))
            got_sha1 = file_sha1(got.path)
            print(f"retrieved: {got.size} bytes, SHA-1 {got_sha1} ({'matches' if got_sha1 == big_sha1 else 'DIFFERS'})")
            if got_sha1 != big_sha1 or got.size != size:
                failures.append("retrieved document differs from the submitted one")
        reply.close()

        for name, phase in (("upload", up), ("download", down)):
            if phase.peak_mib >= LIMIT_MIB:
                failures.append(f"server peak RSS {phase.peak_mib:.1f} MiB >= {LIMIT_MIB} MiB during the {name}")
        return max(up.peak_mib, down.peak_mib), failures
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=10)
            print(f"server exited with code {code} after SIGTERM")
            if code != 0:
                failures.append(f"server exited with code {code} after SIGTERM")
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
            failures.append("server did not exit within 10 s of SIGTERM")
        log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=2048, help="size of the big document in MiB (default 2048)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (server log, files)")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where to create the temporary directory")
    parser.add_argument("--store", choices=["filesystem", "s3"], default="filesystem", help="document store")
    parser.add_argument("--s3-endpoint", help="http(s)://HOST:PORT of an S3 service (default: a moto server here)")
    parser.add_argument("--encryption", choices=["aes-256-gcm", "none"], default="aes-256-gcm")
    args = parser.parse_args()
    free = shutil.disk_usage(args.dir).free
    need = 4 * args.size_mb * MIB + 256 * MIB  # test file, spool and stored copies, retrieved copy
    if free < need:
        print(f"refusing: {free / MIB:.0f} MiB free in {args.dir}, need ~{need / MIB:.0f} MiB", file=sys.stderr)
        return 2
    if os.stat(args.dir).st_dev != os.stat(ROOT).st_dev:
        print(f"note: {args.dir} is not on the disk of {ROOT} (tmpfs would keep the files in RAM); see --dir")
    work = Path(tempfile.mkdtemp(prefix="iti41-bench-", dir=args.dir))
    env = {"CLEARINGHOUSE_ENCRYPTION": args.encryption}
    # Listeners the benchmark does not use take ephemeral ports, so that other servers on the host do not collide.
    env.update({f"CLEARINGHOUSE_{p}_PORT": "0" for p in ("SYSLOG_TLS", "SYSLOG_UDP", "PIX", "CONSOLE")})
    moto = None
    print(f"store: {args.store}, encryption: {args.encryption}")
    try:
        if args.store == "s3":
            endpoint = args.s3_endpoint
            if not endpoint:
                from moto.server import ThreadedMotoServer

                (port,) = free_ports(1)
                moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
                moto.start()
                endpoint = f"http://127.0.0.1:{port}"
            env.update(
                CLEARINGHOUSE_STORE_URL=f"s3://iti41-bench-{os.getpid()}/documents",
                CLEARINGHOUSE_S3_ENDPOINT=endpoint,
                CLEARINGHOUSE_S3_ACCESS_KEY=os.environ.get("CLEARINGHOUSE_S3_ACCESS_KEY", "bench"),
                CLEARINGHOUSE_S3_SECRET_KEY=os.environ.get("CLEARINGHOUSE_S3_SECRET_KEY", "bench-secret"),
                CLEARINGHOUSE_S3_REGION=os.environ.get("CLEARINGHOUSE_S3_REGION", "us-east-1"),
            )
        peak, failures = run(args.size_mb, work, env)
    except Exception as exc:  # noqa: BLE001 - any error is a failed benchmark, reported as such
        peak, failures = 0.0, [f"{type(exc).__name__}: {exc}"]
    finally:
        if moto is not None:
            moto.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if failures:
        print(f"FAIL: {'; '.join(failures)} (N = {args.size_mb} MiB)")
        return 1
    print(f"PASS: server peak RSS {peak:.1f} MiB < {LIMIT_MIB} MiB for a {args.size_mb} MiB submission")
    return 0


if __name__ == "__main__":
    sys.exit(main())
