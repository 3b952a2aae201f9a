"""The webhook sender's https: a real TLS server, certificates made here by a test CA.

The client connects at the address the sender checked and verifies the certificate
against the receiver's name (SNI and hostname check), trusting the system's authorities
and those of BABELQ_WEBHOOK_CA_FILE.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from workers.webhook_http import Client, Reply, destination

NAME = "hooks.example.test"


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
          issuer_key: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A CA, a receiver certificate it signed for NAME, and a self-signed one for NAME."""
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    ca = _cert("babelq test CA", ca_key, "babelq test CA", ca_key, ca=True)
    paths = {name: tmp_path / f"{name}.pem" for name in ("ca", "leaf", "key", "self")}
    paths["ca"].write_bytes(_pem(ca))
    paths["leaf"].write_bytes(_pem(_cert(NAME, leaf_key, "babelq test CA", ca_key, ca=False)))
    paths["self"].write_bytes(_pem(_cert(NAME, leaf_key, NAME, leaf_key, ca=False)))
    paths["key"].write_bytes(leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return paths


def post_over_tls(cert: Path, key: Path, ca_file: Path | None, name: str = NAME
                  ) -> tuple[Reply | BaseException, list[str | None]]:
    """One POST to a TLS server presenting cert, connected at 127.0.0.1 as `name`: the
    reply or the exception, and the server names (SNI) the server was asked for."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    asked: list[str | None] = []
    server_ctx.sni_callback = lambda _sock, sni, _ctx: asked.append(sni)  # type: ignore[assignment,func-returns-value]
    outcome: list[Reply | BaseException] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        listening = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
        port = listening.sockets[0].getsockname()[1]
        client = Client(5.0, 1024, ca_file)
        try:
            outcome.append(await client.post(destination("https", name, port, "127.0.0.1", True),
                                             "/hook", [], b"{}"))
        except (OSError, ssl.SSLError) as exc:
            outcome.append(exc)
        finally:
            client.close()
            listening.close()

    asyncio.run(main())
    return outcome[0], asked


def test_a_receiver_certified_by_the_configured_ca_gets_the_delivery(
        pki: dict[str, Path]) -> None:
    reply, asked = post_over_tls(pki["leaf"], pki["key"], pki["ca"])
    assert isinstance(reply, Reply) and reply.status == 204
    assert asked == [NAME]  # the name, not the address connected to


def test_an_authority_the_sender_does_not_trust_is_refused(pki: dict[str, Path]) -> None:
    for cert, ca_file in ((pki["leaf"], None), (pki["self"], pki["ca"])):
        failed, _ = post_over_tls(cert, pki["key"], ca_file)
        assert isinstance(failed, ssl.SSLCertVerificationError), failed
        assert "certificate verify failed" in str(failed)


def test_a_certificate_for_another_name_is_refused(pki: dict[str, Path]) -> None:
    failed, _ = post_over_tls(pki["leaf"], pki["key"], pki["ca"], name="other.example.test")
    assert isinstance(failed, ssl.SSLCertVerificationError), failed
    assert "hostname" in str(failed).lower() or "match" in str(failed).lower()
