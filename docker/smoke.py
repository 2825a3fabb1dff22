#!/usr/bin/env python3
"""Smoke run of the container files: build the image, start docker/compose.yaml with podman, wait for
the health checks, run a real ITI-8 + ITI-41 + ITI-43 round trip and read /metrics, then stop it.

    sudo .venv/bin/python docker/smoke.py [--keep] [--base-image IMAGE] [--no-build]

Run from a checkout with the project's virtualenv (the client side of the round trip uses the
project's own SOAP, MLLP and TLS code and the tests' sample builders). Needs podman (Debian's 4.3 is
enough) and, where Docker Hub cannot be reached, debootstrap. Not part of the test suite: it takes
minutes (docs/operations.md, "Containers", has a recorded run).

The compose file is read and driven as compose would (services in dependency order, environment
interpolation, named volumes, read-only certificate and key mounts, health checks, `depends_on`
conditions), with only what a smoke run must change:

* host ports are published on 127.0.0.1 at free ports, not the fixed production ones;
* certificates and the KEK are made for the run (a throwaway CA), mounted where compose mounts
  docker/certs and docker/keys, which stay untouched;
* where docker.io cannot be reached, the base image is made locally (debootstrap bookworm, which ships
  Python 3.11: docker/local/base.Containerfile) and passed as the Dockerfile's BASE_IMAGE, PostgreSQL
  comes from Debian's package (docker/local/postgres.Containerfile) and MinIO, which no reachable
  registry ships, is stood in for by moto's S3 server (docker/local/s3.Containerfile), the one the
  tests use. The output says which was used.

Health checks are run with `podman healthcheck run` (podman schedules them with systemd timers,
absent in a container host without systemd); the check is the one compose declares.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
LOCAL = DOCKER / "local"
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

OFFICIAL_BASE = "python:3.11-slim"
LOCAL_BASE = "localhost/isn-local/python:3.11-bookworm"
LOCAL_ROOTFS = "localhost/isn-local/bookworm-rootfs:latest"
LOCAL_POSTGRES = "localhost/isn-local/postgres:latest"
LOCAL_S3 = "localhost/isn-local/s3:latest"
ROOTFS_CACHE = Path("/var/tmp/isn-smoke/rootfs")
SUFFIX = "smoke"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------- podman


@dataclass
class Podman:
    conf: Path
    runtime: str

    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(self.conf)}

    def run(
        self, *args: str, check: bool = True, timeout: float = 1800, quiet: bool = False
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            ["podman", *args], env=self.env(), capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args[:3])}… exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
        if not quiet and proc.returncode != 0:
            log(f"podman {' '.join(args[:2])}: {proc.stderr.strip()[-300:]}")
        return proc

    def image_exists(self, image: str) -> bool:
        return self.run("image", "exists", image, check=False, quiet=True).returncode == 0

    def try_pull(self, image: str) -> bool:
        try:
            return self.run("pull", "--quiet", image, check=False, timeout=120, quiet=True).returncode == 0
        except subprocess.TimeoutExpired:
            return False


def podman_config(directory: Path) -> Podman:
    """A containers.conf for this run only (CONTAINERS_CONF), so the host's configuration is untouched.

    runc when installed: crun 1.8 refuses hosts whose cgroup v2 hierarchy has controllers beside v1
    ("cgroups in hybrid mode not supported"). Ulimits no higher than the host's hard limits: podman's
    defaults (1048576 files) need CAP_SYS_RESOURCE, which a sandboxed root may lack."""
    runtime = "runc" if shutil.which("runc") else "crun"
    limits = []
    # nproc above 32768 was refused in a sandbox whose hard limit was higher (podman's own build default).
    for name, which, cap in (("nofile", resource.RLIMIT_NOFILE, 65536), ("nproc", resource.RLIMIT_NPROC, 32768)):
        _soft, hard = resource.getrlimit(which)
        value = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
        limits.append(f'"{name}={value}:{value}"')
    conf = directory / "containers.conf"
    conf.write_text(f'[containers]\ndefault_ulimits = [{", ".join(limits)}]\n[engine]\nruntime = "{runtime}"\n')
    return Podman(conf, runtime)


# --------------------------------------------------------------------------- images


def make_local_base(pm: Podman, work: Path) -> None:
    """debootstrap bookworm → podman import → docker/local/base.Containerfile."""
    if not pm.image_exists(LOCAL_ROOTFS):
        if not (ROOTFS_CACHE / "usr/bin/python3.11").exists():
            if not shutil.which("debootstrap"):
                raise RuntimeError("no base image can be pulled and debootstrap is not installed")
            log(f"debootstrap bookworm into {ROOTFS_CACHE} (a few minutes)")
            ROOTFS_CACHE.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    "--include=python3,python3-venv,ca-certificates",
                    "bookworm",
                    str(ROOTFS_CACHE),
                    "http://deb.debian.org/debian",
                ],
                check=True,
                capture_output=True,
            )
        log("podman import of the bookworm root file system")
        tar = subprocess.Popen(["tar", "-C", str(ROOTFS_CACHE), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(
            ["podman", "import", "-", LOCAL_ROOTFS], stdin=tar.stdout, env=pm.env(), check=True, capture_output=True
        )
        tar.wait()
    context = work / "base-context"
    context.mkdir()
    shutil.copy(LOCAL / "base.Containerfile", context)
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", context / "ca-bundle.crt")
    log(f"building {LOCAL_BASE}")
    pm.run(
        "build",
        "-f",
        str(context / "base.Containerfile"),
        "--build-arg",
        f"ROOTFS_IMAGE={LOCAL_ROOTFS}",
        "-t",
        LOCAL_BASE,
        str(context),
    )


@dataclass
class Images:
    base: str
    postgres: str | None  # None: compose's own image
    s3: str | None


def prepare_images(pm: Podman, work: Path, base_image: str | None, services: dict) -> Images:
    if base_image:
        base = base_image
    elif pm.image_exists(OFFICIAL_BASE) or pm.try_pull(f"docker.io/library/{OFFICIAL_BASE}"):
        base = OFFICIAL_BASE
    else:
        log(f"{OFFICIAL_BASE} cannot be pulled: making a local bookworm base image")
        if not pm.image_exists(LOCAL_BASE):
            make_local_base(pm, work)
        base = LOCAL_BASE
    upstream = [services["postgres"]["image"], services["minio"]["image"], services["minio-bucket"]["image"]]
    if all(pm.image_exists(i) or pm.try_pull(i) for i in upstream):
        return Images(base, None, None)
    log("PostgreSQL / MinIO images cannot be pulled: Debian's PostgreSQL and moto's S3 server stand in")
    for name, tag in (("postgres", LOCAL_POSTGRES), ("s3", LOCAL_S3)):
        if not pm.image_exists(tag):
            log(f"building {tag}")
            pm.run(
                "build",
                "-f",
                str(LOCAL / f"{name}.Containerfile"),
                "--build-arg",
                f"BASE_IMAGE={base}",
                "-t",
                tag,
                str(LOCAL),
            )
    return Images(base, LOCAL_POSTGRES, LOCAL_S3)


# --------------------------------------------------------------------------- compose


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: object, env: dict[str, str]) -> object:
    """Compose's variable substitution: $$, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3) or ""
        have = env.get(name)
        unset = have is None or (op is not None and op.startswith(":") and have == "")
        if op and op.endswith("?") and unset:
            raise RuntimeError(f"compose: {name}: {arg}")
        if op and op.endswith("-") and unset:
            return arg
        return have or ""

    return _VAR.sub(one, value)


def start_order(services: dict) -> list[str]:
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...] = ()) -> None:
        if name in order:
            return
        if name in path:
            raise RuntimeError(f"compose: dependency cycle through {name}")
        for dep in services[name].get("depends_on", {}) or {}:
            visit(dep, (*path, name))
        order.append(name)

    for name in services:
        visit(name)
    return order


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _seconds(value: str | None, default: float) -> float:
    if not value:
        return default
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", value):
        total += float(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


@dataclass
class Stack:
    pm: Podman
    project: str
    services: dict
    mounts: dict[str, Path]  # container target -> host path, for compose's bind mounts
    containers: list[str] = field(default_factory=list)
    volumes: set[str] = field(default_factory=set)
    published: dict[tuple[str, int], int] = field(default_factory=dict)  # (service, container port) -> host port

    @property
    def network(self) -> str:
        return f"{self.project}-{SUFFIX}"

    def container(self, service: str) -> str:
        return f"{self.project}-{SUFFIX}-{service}"

    def create_network(self) -> None:
        self.pm.run("network", "rm", "-f", self.network, check=False, quiet=True)
        self.pm.run("network", "create", self.network)

    def run_args(self, name: str, svc: dict) -> list[str]:
        args = ["run", "-d", "--name", self.container(name), "--network", self.network, "--network-alias", name]
        for key, value in (svc.get("environment") or {}).items():
            args += ["-e", f"{key}={value}"]
        for port in svc.get("ports") or []:
            spec = str(port)
            proto = "udp" if spec.endswith("/udp") else "tcp"
            target = int(spec.split("/")[0].rsplit(":", 1)[-1])
            host = free_port()
            self.published[(name, target)] = host
            args += ["-p", f"127.0.0.1:{host}:{target}/{proto}"]
        for volume in svc.get("volumes") or []:
            source, target, *mode = volume.split(":")
            if source.startswith((".", "/")):
                host_path = self.mounts.get(target, (DOCKER / source).resolve())
                args += ["-v", ":".join([str(host_path), target, *mode])]
            else:
                self.volumes.add(f"{self.network}-{source}")
                args += ["-v", ":".join([f"{self.network}-{source}", target, *mode])]
        health = svc.get("healthcheck")
        if health:
            test = health["test"]
            command = test[1] if test[0] == "CMD-SHELL" else json.dumps(test[1:])
            args += ["--health-cmd", command, "--health-retries", str(health.get("retries", 3))]
            args += [
                "--health-interval",
                health.get("interval", "30s"),
                "--health-timeout",
                health.get("timeout", "30s"),
            ]
            args += ["--health-start-period", health.get("start_period", "0s")]
        if "stop_grace_period" in svc:
            args += ["--stop-timeout", str(int(_seconds(svc["stop_grace_period"], 10)))]
        entrypoint = svc.get("entrypoint")
        if entrypoint is not None:
            args += ["--entrypoint", json.dumps(entrypoint) if isinstance(entrypoint, list) else entrypoint]
        args.append(svc["image"])
        command = svc.get("command")
        if command is not None:
            args += command if isinstance(command, list) else ["sh", "-c", command]
        return args

    def start(self, name: str) -> None:
        svc = self.services[name]
        for dep, cond in (svc.get("depends_on") or {}).items():
            condition = (cond or {}).get("condition", "service_started")
            if condition == "service_healthy":
                self.wait_healthy(dep)
            elif condition == "service_completed_successfully":
                self.wait_completed(dep)
        self.pm.run("rm", "-f", self.container(name), check=False, quiet=True)
        self.pm.run(*self.run_args(name, svc))
        self.containers.append(self.container(name))
        log(f"started {name} ({svc['image']})")

    def wait_healthy(self, name: str, timeout: float = 300) -> float:
        started, deadline = time.monotonic(), time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pm.run("healthcheck", "run", self.container(name), check=False, quiet=True).returncode == 0:
                took = time.monotonic() - started
                log(f"{name} healthy after {took:.1f} s")
                return took
            state = self.pm.run(
                "inspect", "--format", "{{.State.Status}}", self.container(name), check=False, quiet=True
            )
            if state.stdout.strip() in ("exited", "stopped"):
                raise RuntimeError(f"{name} exited before it was healthy:\n{self.logs(name)}")
            time.sleep(2)
        raise RuntimeError(f"{name} not healthy after {timeout} s:\n{self.logs(name)}")

    def wait_completed(self, name: str) -> None:
        code = self.pm.run("wait", self.container(name), timeout=300).stdout.strip()
        if code != "0":
            raise RuntimeError(f"{name} exited {code}:\n{self.logs(name)}")
        log(f"{name} completed")

    def logs(self, name: str, tail: int = 40) -> str:
        proc = self.pm.run("logs", "--tail", str(tail), self.container(name), check=False, quiet=True)
        return (proc.stdout + proc.stderr).strip()

    def exec(self, name: str, *command: str) -> str:
        return self.pm.run("exec", self.container(name), *command).stdout

    def stop(self, name: str) -> tuple[float, str]:
        began = time.monotonic()
        self.pm.run("stop", self.container(name), timeout=120)
        code = self.pm.run("inspect", "--format", "{{.State.ExitCode}}", self.container(name)).stdout.strip()
        return time.monotonic() - began, code

    def remove(self) -> None:
        for c in reversed(self.containers):
            self.pm.run("rm", "-f", "-t", "5", c, check=False, quiet=True)
        for v in self.volumes:
            self.pm.run("volume", "rm", "-f", v, check=False, quiet=True)
        self.pm.run("network", "rm", "-f", self.network, check=False, quiet=True)


def local_overrides(services: dict, images: Images) -> None:
    """Replace what cannot be pulled by the stand-ins (docker/local/), keeping everything else."""
    if images.postgres:
        services["postgres"]["image"] = images.postgres
    if images.s3:
        minio = services["minio"]
        minio["image"] = images.s3
        minio.pop("command", None)
        probe = "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9000/', timeout=3)"
        minio["healthcheck"] = {**minio["healthcheck"], "test": ["CMD", "python", "-c", probe]}
        job = services["minio-bucket"]
        job["image"] = images.s3
        job["entrypoint"] = ["python", "/usr/local/bin/make-bucket"]
        job.pop("command", None)


# --------------------------------------------------------------------------- certificates, round trip


@dataclass
class Material:
    certs: Path
    keys: Path
    kek_id: str
    clients: dict[str, tuple[Path, Path]]  # name -> (cert, key)

    @property
    def ca(self) -> Path:
        return self.certs / "ca.cert.pem"


CLIENTS = {"smoke-edge": "source", "smoke-phr": "consumer", "smoke-monitor": "monitor"}


def make_material(work: Path) -> Material:
    """A throwaway CA, the server's certificate (localhost, 127.0.0.1), participants' certificates and
    a KEK, readable by the image's user (uid 10001) as docs/operations.md asks of production files."""
    from clearinghouse import pki

    certs, keys, clients = work / "certs", work / "keys", work / "clients"
    for d in (certs, keys, clients):
        d.mkdir()
    ca = pki.create_ca("ISN smoke-run CA")
    server = pki.issue_certificate(ca, "localhost", server_names=["localhost", "127.0.0.1"])
    (certs / "ca.cert.pem").write_bytes(ca.cert_pem)
    (certs / "server.cert.pem").write_bytes(server.cert_pem)
    pki.write_private(certs / "server.key.pem", server.key_pem)
    out = {}
    for name in CLIENTS:
        issued = pki.issue_certificate(ca, name, client=True)
        (certs / f"{name}.cert.pem").write_bytes(issued.cert_pem)  # for `participants import` in the container
        cert, key = clients / f"{name}.cert.pem", clients / f"{name}.key.pem"
        cert.write_bytes(issued.cert_pem)
        pki.write_private(key, issued.key_pem)
        out[name] = (cert, key)
    kek_id = "kek-smoke"
    (keys / f"{kek_id}.key").write_text(b64encode(secrets.token_bytes(32)).decode() + "\n")
    for d in (certs, keys):
        os.chown(d, 10001, 10001)
        for f in d.iterdir():
            os.chown(f, 10001, 10001)
            f.chmod(0o600 if f.name.endswith(".key") or f.name.endswith(".key.pem") else 0o644)
    return Material(certs, keys, kek_id, out)


def round_trip(stack: Stack, material: Material) -> dict[str, float]:
    """ITI-8 (feed), ITI-41 (MTOM, DICOM and a report), ITI-43 (bytes compared), /metrics."""
    import edge

    from clearinghouse.mllp import MllpClient
    from clearinghouse.soap.client import https_client
    from clearinghouse.tls import client_context
    from clearinghouse.xmlsafe import NS

    https = stack.published[("clearinghouse", 8443)]
    feed = stack.published[("clearinghouse", 8890)]
    timings: dict[str, float] = {}

    def ctx(name: str) -> ssl.SSLContext:
        cert, key = material.clients[name]
        return client_context(material.ca, cert, key)

    def soap(name: str):  # noqa: ANN202
        cert, key = material.clients[name]
        return https_client(
            f"https://127.0.0.1:{https}/xds/repository",
            material.ca,
            cert,
            key,
            spool_dir=material.certs.parent / "client-spool",
        )

    patient = edge.patient_for(edge.new_access_code(), "19700412")
    began = time.monotonic()
    client = MllpClient("127.0.0.1", feed, ctx("smoke-edge"))
    try:
        ack = client.send(edge.feed_message(patient))
    finally:
        client.close()
    if b"MSA|AA|" not in ack:
        raise RuntimeError(f"ITI-8 not accepted: {ack!r}")
    timings["ITI-8"] = time.monotonic() - began
    log(f"ITI-8 feed of {patient.split('^')[0][:16]}… accepted (AA)")

    study = edge.study(patient, report=True, samples=["CT_small.dcm", "MR_small.dcm"])
    began = time.monotonic()
    reply = edge.submit(soap("smoke-edge"), study, mtom=True)
    if reply.body.get("status") != edge.SUCCESS:
        raise RuntimeError(f"ITI-41 failed: {edge.errors_of(reply.body)}")
    timings["ITI-41"] = time.monotonic() - began
    size = sum(len(v) for v in study.contents.values())
    log(f"ITI-41 of {len(study.contents)} documents ({size} bytes) over MTOM: Success")

    began = time.monotonic()
    got = edge.retrieve(soap("smoke-phr"), study.unique_ids)
    try:
        status = got.body.find("rs:RegistryResponse", NS).get("status")
        documents = edge.retrieved_documents(got)
    finally:
        got.close()
    timings["ITI-43"] = time.monotonic() - began
    if status != edge.SUCCESS or documents != study.contents:
        raise RuntimeError(f"ITI-43: status {status}, documents equal: {documents == study.contents}")
    log(f"ITI-43 returned the {len(documents)} documents byte for byte")

    with urllib.request.urlopen(f"https://127.0.0.1:{https}/metrics", context=ctx("smoke-monitor"), timeout=30) as resp:
        metrics = resp.read().decode()
    wanted = [
        'clearinghouse_transactions_total{transaction="ITI-41"',
        'clearinghouse_transactions_total{transaction="ITI-43"',
        'clearinghouse_stored{unit="documents"}',
    ]
    missing = [w for w in wanted if w not in metrics]
    if missing:
        raise RuntimeError(f"/metrics lacks {missing}")
    lines = [
        line
        for line in metrics.splitlines()
        if line.startswith(("clearinghouse_transactions_total", "clearinghouse_stored"))
    ]
    log("/metrics: " + "; ".join(lines[:6]))
    return timings


def bucket_objects(stack: Stack, env: dict[str, str], images: Images) -> int | None:
    """How many objects the documents bucket holds (the S3 stand-in only: boto3 is in its image)."""
    if not images.s3:
        return None
    script = (
        "import boto3,os;"
        "c=boto3.client('s3',endpoint_url='http://127.0.0.1:9000',aws_access_key_id='x',aws_secret_access_key='y',region_name='us-east-1');"
        f"print(c.list_objects_v2(Bucket='{env['DOCUMENTS_BUCKET']}').get('KeyCount',0))"
    )
    return int(stack.exec("minio", "python", "-c", script).strip())


# --------------------------------------------------------------------------- main


@contextmanager
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="isn-smoke-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--base-image", help=f"base image for docker/Dockerfile (default {OFFICIAL_BASE}, else a local bookworm one)"
    )
    parser.add_argument("--no-build", action="store_true", help="use the isn-clearinghouse:latest image already built")
    parser.add_argument(
        "--keep", action="store_true", help="leave the stack running (remove it with podman rm/volume rm)"
    )
    args = parser.parse_args(argv)
    if not shutil.which("podman"):
        print("podman is not installed (Debian: apt-get install podman)", file=sys.stderr)
        return 2
    began = time.monotonic()
    phases: dict[str, float] = {}
    with workdir() as work:
        pm = podman_config(work)
        log(f"podman {pm.run('--version').stdout.split()[-1]}, runtime {pm.runtime}")
        spec = yaml.safe_load((DOCKER / "compose.yaml").read_text())
        material = make_material(work)
        env = {
            "POSTGRES_PASSWORD": secrets.token_urlsafe(16),
            "MINIO_ROOT_USER": "clearinghouse",
            "MINIO_ROOT_PASSWORD": secrets.token_urlsafe(16),
            "DOCUMENTS_BUCKET": "isn-documents",
            "CLEARINGHOUSE_KEK_FILES": f"{material.kek_id}=/run/clearinghouse/keys/{material.kek_id}.key",
            "CLEARINGHOUSE_KEK_CURRENT": material.kek_id,
        }
        services = interpolate(spec["services"], env)
        assert isinstance(services, dict)

        t = time.monotonic()
        images = prepare_images(pm, work, args.base_image, services)
        phases["base and stand-in images"] = time.monotonic() - t
        ch = services["clearinghouse"]
        image = ch["image"]
        if not args.no_build:
            t = time.monotonic()
            log(f"building {image} FROM {images.base}")
            context = (DOCKER / ch["build"]["context"]).resolve()
            pm.run(
                "build",
                "-f",
                str(context / ch["build"]["dockerfile"]),
                "--ignorefile",
                str(DOCKER / "Dockerfile.dockerignore"),
                "--build-arg",
                f"BASE_IMAGE={images.base}",
                "-t",
                image,
                str(context),
            )
            phases["image build"] = time.monotonic() - t
        local_overrides(services, images)
        stack = Stack(
            pm,
            spec.get("name", "isn-clearinghouse"),
            services,
            mounts={"/run/clearinghouse/tls": material.certs, "/run/clearinghouse/keys": material.keys},
        )
        ok = False
        try:
            t = time.monotonic()
            stack.create_network()
            for name in start_order(services):
                stack.start(name)
            phases["clearinghouse healthy (start of stack to health check passing)"] = 0.0
            health = stack.wait_healthy("clearinghouse")
            phases["clearinghouse healthy (start of stack to health check passing)"] = time.monotonic() - t
            log(f"clearinghouse container healthy {health:.1f} s after it started")
            for name, role in CLIENTS.items():
                out = stack.exec(
                    "clearinghouse", "clearinghouse", "participants", "import", name,
                    "--cert", f"/run/clearinghouse/tls/{name}.cert.pem", "--role", role,
                )  # fmt: skip
                log(out.strip().splitlines()[-1])
            t = time.monotonic()
            timings = round_trip(stack, material)
            phases["round trip (ITI-8, ITI-41, ITI-43, /metrics)"] = time.monotonic() - t
            objects = bucket_objects(stack, env, images)
            if objects is not None:
                log(f"documents bucket holds {objects} object(s)")
                if objects < 3:
                    raise RuntimeError("the documents are not in the S3 store")
            if not args.keep:
                took, code = stack.stop("clearinghouse")
                log(f"clearinghouse stopped on SIGTERM in {took:.1f} s, exit code {code}")
                if code != "0":
                    raise RuntimeError(f"clearinghouse exited {code} on SIGTERM:\n{stack.logs('clearinghouse')}")
            ok = True
            log("round trip timings: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in timings.items()))
        except Exception as exc:  # noqa: BLE001 - reported with the containers' logs
            log(f"FAILED: {exc}")
            for name in services:
                if stack.container(name) in stack.containers:
                    print(f"--- {name} logs ---\n{stack.logs(name)}", file=sys.stderr)
        finally:
            if not args.keep:
                stack.remove()
        for k, v in phases.items():
            log(f"{k}: {v:.1f} s")
        log(f"{'PASSED' if ok else 'FAILED'} in {time.monotonic() - began:.1f} s")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
