"""The local PKI (services/admin/pki.py) holds up under RFC 5280's strict profile.

Python 3.13's ``ssl.create_default_context()`` sets ``VERIFY_X509_STRICT``, which refuses a
certificate without an Authority Key Identifier; before these certificates carried one, a
client on 3.13 could not reach the local kube-apiserver at all (its /readyz never answered).
The handshakes here run in memory, each side verifying the other with that flag set.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography import x509

from memcached_operator.admin import pki

pytestmark = pytest.mark.unit


def _handshake(client: ssl.SSLContext, server: ssl.SSLContext, hostname: str) -> None:
    """A TLS handshake through memory buffers; raises ssl.SSLError when either side refuses."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname=hostname)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, side in (("client", c), ("server", s)):
            if done[name]:
                continue
            try:
                side.do_handshake()
                done[name] = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError(f"the handshake did not finish: {done}")


def _strict(purpose: ssl.Purpose, ca: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(purpose, cafile=str(ca))
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    return ctx


def test_the_apiserver_and_a_client_verify_each_other_under_the_strict_profile(
    tmp_path: Path,
) -> None:
    p = pki.ensure(tmp_path, clients={"admin": "system:masters"})
    client = _strict(ssl.Purpose.SERVER_AUTH, p.ca_cert)
    client.load_cert_chain(str(p.client_cert("admin")), str(p.client_key("admin")))
    server = _strict(ssl.Purpose.CLIENT_AUTH, p.ca_cert)
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_cert_chain(str(p.serving_cert), str(p.serving_key))

    _handshake(client, server, "localhost")


def test_every_issued_certificate_names_its_issuer_key(tmp_path: Path) -> None:
    p = pki.ensure(tmp_path, clients={"admin": None}, servers={"nats": ["127.0.0.1"]})
    ca = x509.load_pem_x509_certificate(p.ca_cert.read_bytes())
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    for path in (p.serving_cert, p.server_cert("nats"), p.client_cert("admin")):
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        assert aki.key_identifier == ca_ski, path.name
