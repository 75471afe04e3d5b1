"""MLLP over TLS with a client certificate: the registered certificate is the interface; the
same address without it gets nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from carnet.interfaces.mllp import MllpListener, send, tls_context
from carnet.interfaces.registry import register_interface
from carnet.interfaces.service import InterfaceService
from carnet.runtime import Runtime
from tests.factories import make_facility
from tests.interfaces.helpers import Person, adt, msa

Pair = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def _cert(name: str, issuer: Pair | None, *, ca: bool = False) -> Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    return cert, key


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    cert_path, key_path = path.with_suffix(".pem"), path.with_suffix(".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_tls_with_the_registered_client_certificate(sqlite_runtime: Runtime, tmp_path: Path) -> None:
    ca = _cert("carnet test CA", None, ca=True)
    server = _cert("localhost", ca)
    lab = _cert("lab", ca)
    other = _cert("someone else", ca)
    ca_pem, _ = _write(tmp_path / "ca", *ca)
    server_pem, server_key = _write(tmp_path / "server", *server)
    lab_pem, lab_key = _write(tmp_path / "lab", *lab)
    other_pem, other_key = _write(tmp_path / "other", *other)
    fingerprint = hashlib.sha256(lab[0].public_bytes(serialization.Encoding.DER)).hexdigest()
    facility = make_facility(sqlite_runtime)
    with sqlite_runtime.session_factory.begin() as session:
        register_interface(
            session,
            name="ADT",
            sending_facility="HOSP",
            facility_id=facility,
            message_types=["ADT^A04"],
            source_addresses=[],
            client_cert_sha256=fingerprint,
            per_minute=100,
        )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    listener = MllpListener(
        InterfaceService(sqlite_runtime), port=0, ssl_context=tls_context(server_pem, server_key, ca_pem)
    )
    port = asyncio.run_coroutine_threadsafe(listener.start(), loop).result(30)

    def client(cert: Path, key: Path) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(ca_pem))
        context.load_cert_chain(cert, key)
        return context

    message = adt("A04", "TLS-1", Person(ipp="T1"), klass="O", location=None)
    try:
        [answer] = asyncio.run(send("localhost", port, [message], ssl_context=client(lab_pem, lab_key)))
        assert msa(answer)[1] == "AA", msa(answer)
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            asyncio.run(send("localhost", port, [message], ssl_context=client(other_pem, other_key)))
        no_cert = ssl.create_default_context(cafile=str(ca_pem))
        with pytest.raises((ConnectionError, ssl.SSLError, asyncio.IncompleteReadError)):
            asyncio.run(send("localhost", port, [message], ssl_context=no_cert))
    finally:
        asyncio.run_coroutine_threadsafe(listener.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
