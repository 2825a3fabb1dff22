"""docker/: what can be checked without a Docker engine. The compose file is YAML with what compose
needs and names only real settings; the Dockerfile copies files that exist, every package the project
installs, runs as a non-root user and has a health check; the health check script works against a
real server; the smoke driver (docker/smoke.py) reads the compose file as compose does. The image is
built and the stack run by docker/smoke.py, outside this suite (docs/operations.md, "Containers")."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import running_instance

from clearinghouse.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
SETTINGS = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings) if f.name != "extra"}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (DOCKER / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_dockerfile_copies_what_exists_and_every_installed_package():
    instructions = dockerfile_instructions()
    # The official image unless a build passes another base (docker/smoke.py, where Docker Hub is out of reach).
    assert instructions[0] == ("ARG", "BASE_IMAGE=python:3.11-slim")
    assert instructions[1] == ("FROM", "${BASE_IMAGE}")
    copied = []
    for word, args in instructions:
        if word == "COPY":
            *sources, _dest = shlex.split(args)
            for src in sources:
                assert (ROOT / src).exists(), f"COPY {src}: no such file in the repository"
                copied.append(src.rstrip("/"))
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for pattern in include:
        assert pattern.rstrip("*") in copied, f"package {pattern} is installed by pip but not copied into the image"
    # The conformance suites find their feature files beside the packages.
    assert "features" in copied and "pyproject.toml" in copied


def test_dockerfile_runs_clearinghouse_serve_as_a_non_root_user_with_a_health_check():
    instructions = dockerfile_instructions()
    words = [w for w, _ in instructions]
    user = [a for w, a in instructions if w == "USER"]
    assert user and user[-1] not in ("root", "0")
    assert words.index("USER") < words.index("ENTRYPOINT")
    assert ("ENTRYPOINT", '["clearinghouse"]') in instructions and ("CMD", '["serve"]') in instructions
    (health,) = [a for w, a in instructions if w == "HEALTHCHECK"]
    assert "clearinghouse-healthcheck" in health
    runs = " ".join(a for w, a in instructions if w == "RUN")
    assert "pip install" in runs and "useradd" in runs
    env = " ".join(a for w, a in instructions if w == "ENV")
    for name in re.findall(r"(CLEARINGHOUSE_[A-Z0-9_]+)=", env):
        assert name in SETTINGS, f"ENV {name} is not a setting"
    exposed = " ".join(a for w, a in instructions if w == "EXPOSE").split()
    defaults = Settings()
    for port in (defaults.https_port, defaults.feed_port, defaults.pix_port, defaults.syslog_tls_port):
        assert str(port) in exposed
    assert f"{defaults.syslog_udp_port}/udp" in exposed


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    ignored = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    for entry in (".venv", ".git", "clearinghouse-data", "docker/certs", "docker/.env"):
        assert entry in ignored


def test_compose_file_has_the_services_health_checks_and_read_only_certificates():
    doc = compose()
    services = doc["services"]
    assert {"postgres", "minio", "clearinghouse"} <= set(services)
    for name in ("postgres", "minio", "clearinghouse"):
        test = services[name]["healthcheck"]["test"]
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
    ch = services["clearinghouse"]
    assert ch["build"]["dockerfile"] == "docker/Dockerfile"
    assert (DOCKER / ch["build"]["context"] / ch["build"]["dockerfile"]).is_file()
    assert ch["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert ch["depends_on"]["minio-bucket"]["condition"] == "service_completed_successfully"
    # Production certificates come from outside, read-only, and the TLS settings point into that mount.
    mounts = {v.split(":")[1]: v for v in ch["volumes"]}
    assert mounts["/run/clearinghouse/tls"].endswith(":ro")
    env = ch["environment"]
    for key in ("CLEARINGHOUSE_TLS_CERT", "CLEARINGHOUSE_TLS_KEY", "CLEARINGHOUSE_TLS_CA"):
        assert env[key].startswith("/run/clearinghouse/tls/")
    assert env["CLEARINGHOUSE_DATABASE_URL"].startswith("postgresql://")
    assert env["CLEARINGHOUSE_STORE_URL"].startswith("s3://")
    # Every CLEARINGHOUSE_* variable it sets is a real setting (names follow clearinghouse/config.py).
    for key in env:
        assert key in SETTINGS, f"{key} is not a setting"
    # Named volumes are declared.
    declared = set(doc["volumes"])
    for svc in services.values():
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if not src.startswith((".", "/")):
                assert src in declared, src


def test_env_example_sets_every_variable_compose_requires():
    text = (DOCKER / "compose.yaml").read_text()
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
    example = {
        line.split("=", 1)[0]
        for line in (DOCKER / "env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert required and required <= example


def test_compose_config_when_a_docker_client_with_compose_is_installed(tmp_path):
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("no docker compose client here")
    env_file = tmp_path / ".env"
    env_file.write_text((DOCKER / "env.example").read_text())
    result = subprocess.run(
        [docker, "compose", "--env-file", str(env_file), "-f", str(DOCKER / "compose.yaml"), "config", "--quiet"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_health_check_script_against_a_running_server(tmp_path):
    with running_instance(tmp_path) as running:
        ports = {
            "CLEARINGHOUSE_HTTPS_PORT": running.https_port,
            "CLEARINGHOUSE_FEED_PORT": running.feed_port,
            "CLEARINGHOUSE_PIX_PORT": running.pix_port,
            "CLEARINGHOUSE_SYSLOG_TLS_PORT": running.ch.audit.syslog_tls.port,
        }
        env = {**os.environ, **{k: str(v) for k, v in ports.items()}}
        check = [sys.executable, str(DOCKER / "healthcheck.py")]
        healthy = subprocess.run(check, env=env, capture_output=True, text=True, timeout=60)
        assert healthy.returncode == 0, healthy.stderr
        closed = _free_port()
        sick = subprocess.run(
            check, env={**env, "CLEARINGHOUSE_PIX_PORT": str(closed)}, capture_output=True, text=True, timeout=60
        )
        assert sick.returncode == 1 and f"pix (127.0.0.1:{closed})" in sick.stderr


def _smoke():  # noqa: ANN202
    sys.path.insert(0, str(DOCKER))
    try:
        import smoke
    finally:
        sys.path.remove(str(DOCKER))
    return smoke


def test_smoke_driver_reads_the_compose_file_as_compose_does():
    smoke = _smoke()
    env = {
        line.split("=", 1)[0]: line.split("=", 1)[1]
        for line in (DOCKER / "env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    services = smoke.interpolate(compose()["services"], env)
    order = smoke.start_order(services)
    assert order.index("postgres") < order.index("clearinghouse")
    assert order.index("minio") < order.index("minio-bucket") < order.index("clearinghouse")
    ch = services["clearinghouse"]["environment"]
    assert ch["CLEARINGHOUSE_STORE_URL"] == f"s3://{env['DOCUMENTS_BUCKET']}/documents"
    assert (
        ch["CLEARINGHOUSE_DATABASE_URL"]
        == f"postgresql://clearinghouse:{env['POSTGRES_PASSWORD']}@postgres:5432/clearinghouse"
    )
    # $$ is compose's escape for a literal $ (the bucket job's shell variables).
    assert "$MINIO_ROOT_USER" in services["minio-bucket"]["command"][0]
    with pytest.raises(RuntimeError, match="POSTGRES_PASSWORD"):
        smoke.interpolate(compose()["services"], {k: v for k, v in env.items() if k != "POSTGRES_PASSWORD"})
    assert smoke.interpolate("${A:-x}/${B-y}/${C}", {"A": "", "B": ""}) == "x//"


def test_local_stand_in_files_exist():
    for name in ("base.Containerfile", "postgres.Containerfile", "postgres-entrypoint.sh", "s3.Containerfile"):
        assert (DOCKER / "local" / name).is_file(), name
    s3 = (DOCKER / "local" / "s3.Containerfile").read_text()
    # The stand-in runs the moto version the tests run.
    import moto

    assert f"moto[server]=={moto.__version__}" in s3
