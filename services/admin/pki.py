"""The local control plane's PKI, generated with the `cryptography` package.

One CA signs a serving certificate for kube-apiserver (SANs for loopback and the in-cluster
service names), serving certificates for other servers on request (nats-server, with the names
it is reached by) and client certificates: the admin (group system:masters) and one per
component, so audit logs and RBAC show who did what. A separate RSA key pair signs service
account tokens. Files are written once and reused by later `cluster up` runs.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = dt.timedelta(days=3650)


class _File:
    """A file of the PKI directory, read as an attribute (``pki.ca_cert``)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, pki: Pki, owner: type[Pki] | None = None) -> Path:
        return pki.dir / self.name


@dataclass(frozen=True)
class Pki:
    dir: Path

    ca_cert = _File("ca.crt")
    ca_key = _File("ca.key")
    serving_cert = _File("apiserver.crt")
    serving_key = _File("apiserver.key")
    # The key pair that signs and checks service account tokens.
    sa_key = _File("sa.key")
    sa_pub = _File("sa.pub")

    def server_cert(self, server: str) -> Path:
        return self.dir / f"server-{server}.crt"

    def server_key(self, server: str) -> Path:
        return self.dir / f"server-{server}.key"

    def client_cert(self, user: str) -> Path:
        return self.dir / f"{user}.crt"

    def client_key(self, user: str) -> Path:
        return self.dir / f"{user}.key"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _write(path: Path, data: bytes, *, private: bool) -> None:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)


def _issue(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    cert_path: Path,
    key_path: Path,
    *,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName] | None = None,
) -> None:
    """A fresh key and a certificate for it signed by the CA, written to the two paths,
    unless the certificate exists (files are written once and reused)."""
    if cert_path.exists():
        return
    ca_cert, ca_key = ca
    key = _key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write(key_path, _pem_key(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def ensure(
    directory: Path,
    *,
    clients: dict[str, str | None],
    servers: Mapping[str, Sequence[str]] | None = None,
) -> Pki:
    """Create the PKI in `directory` unless it exists; `clients` maps user name → group,
    `servers` a server's name → the DNS names and IP addresses its certificate is valid for."""
    pki = Pki(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not pki.ca_cert.exists():
        ca_key = _key()
        now = dt.datetime.now(dt.UTC)
        subject = _name("memcached-operator-local-ca")
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write(pki.ca_key, _pem_key(ca_key), private=True)
        _write(pki.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    loaded = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    ca_key = loaded

    ca = (ca_cert, ca_key)
    sans: list[x509.GeneralName] = [
        x509.DNSName(n)
        for n in (
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        )
    ]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", "10.0.0.1")]
    _issue(
        ca,
        pki.serving_cert,
        pki.serving_key,
        subject=_name("kube-apiserver"),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        sans=sans,
    )
    for server, names in (servers or {}).items():
        _issue(
            ca,
            pki.server_cert(server),
            pki.server_key(server),
            subject=_name(server),
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            sans=[_san(n) for n in names],
        )
    for user, group in clients.items():
        _issue(
            ca,
            pki.client_cert(user),
            pki.client_key(user),
            subject=_name(user, group),
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        )

    if not pki.sa_key.exists():
        sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write(pki.sa_key, _pem_key(sa), private=True)
        pub = sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        _write(pki.sa_pub, pub, private=False)
    return pki
