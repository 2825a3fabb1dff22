"""The clearinghouse PKI: a development CA, server certificates and participant client certificates.

Production deployments mount certificates issued elsewhere (settings tls_cert/tls_key/tls_ca);
the development PKI is created on first start so that ``clearinghouse serve`` works out of the box.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(days=825)


@dataclass(frozen=True)
class IssuedIdentity:
    key_pem: bytes
    cert_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


def _name(common_name: str, org: str = "ISN Clearinghouse") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def create_ca(
    common_name: str = "ISN Clearinghouse Development CA", *, now: dt.datetime | None = None
) -> IssuedIdentity:
    now = now or dt.datetime.now(dt.UTC)
    key = _new_key()
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return IssuedIdentity(_key_pem(key), _cert_pem(cert))


def issue_certificate(
    ca: IssuedIdentity,
    common_name: str,
    *,
    server_names: list[str] | None = None,
    client: bool = True,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> IssuedIdentity:
    """Issue a leaf certificate signed by ``ca``: a server certificate when ``server_names`` is given
    (DNS names and IP addresses as subjectAltName), otherwise a TLS client certificate."""
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    ca_cert = ca.certificate
    key = _new_key()
    now = dt.datetime.now(dt.UTC)
    not_before = not_before or now - dt.timedelta(minutes=5)
    not_after = not_after or now + LEAF_VALIDITY
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server_names else []
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)
    )
    if server_names:
        alt: list[x509.GeneralName] = []
        for n in server_names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                alt.append(x509.DNSName(n))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return IssuedIdentity(_key_pem(key), _cert_pem(cert))


def pkcs12_bundle(identity: IssuedIdentity, ca_cert_pem: bytes, name: str, password: bytes | None) -> bytes:
    """A PKCS#12 file (key, certificate and CA) for Java edges; ``password`` None means unencrypted."""
    key = serialization.load_pem_private_key(identity.key_pem, password=None)
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return pkcs12.serialize_key_and_certificates(
        name.encode(),
        key,  # type: ignore[arg-type]
        identity.certificate,
        [x509.load_pem_x509_certificate(ca_cert_pem)],
        encryption,
    )


def write_private(path: Path, data: bytes) -> None:
    """Write a secret readable by the owner only, created with that mode (no window of wider access)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def subject_of(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def load_certificate(pem_or_der: bytes) -> x509.Certificate:
    if b"-----BEGIN" in pem_or_der:
        return x509.load_pem_x509_certificate(pem_or_der)
    return x509.load_der_x509_certificate(pem_or_der)


def ensure_development_pki(pki_dir: Path, server_names: list[str] | None = None) -> bool:
    """Create the development CA and a server certificate under ``pki_dir`` unless present.

    Returns True when it created them.
    """
    ca_cert, ca_key = pki_dir / "ca.cert.pem", pki_dir / "ca.key.pem"
    server_cert, server_key = pki_dir / "server.cert.pem", pki_dir / "server.key.pem"
    if ca_cert.exists() and server_cert.exists():
        return False
    pki_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(pki_dir, 0o700)
    # Several `serve` processes sharing a home may start at once: one creates the PKI, the others
    # wait and then use it (without the lock each would write a CA of its own over the others').
    with open(pki_dir / ".create-lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        if ca_cert.exists() and server_cert.exists():
            return False
        ca = create_ca()
        write_private(ca_key, ca.key_pem)
        ca_cert.write_bytes(ca.cert_pem)
        server = issue_certificate(
            ca, "localhost", server_names=server_names or ["localhost", "127.0.0.1", "::1"], client=True
        )
        write_private(server_key, server.key_pem)
        server_cert.write_bytes(server.cert_pem)
    return True


def load_ca(pki_dir: Path) -> IssuedIdentity:
    key_path = pki_dir / "ca.key.pem"
    if not key_path.exists():
        raise FileNotFoundError(
            f"{key_path} not found: this clearinghouse does not hold its CA key "
            "(production certificates are issued elsewhere; use 'participants import')"
        )
    return IssuedIdentity(key_path.read_bytes(), (pki_dir / "ca.cert.pem").read_bytes())
