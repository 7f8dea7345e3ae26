"""A throwaway PKI for the TLS tests: a CA, a server certificate for ``localhost`` and
``127.0.0.1`` signed by it, a client certificate signed by it, and a second CA that signed
nothing the servers present (the "wrong CA"); and a Redis Cluster of TLS-only nodes. Keys
are EC P-256 (generated in about a millisecond, where RSA-2048 takes tenths of a second);
certificates are valid for a day."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from esctl import servers
from esctl.servers import TlsFiles


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    wrong_ca: Path
    """A CA of its own that signed none of the above."""
    expired_cert: Path
    expired_key: Path
    """A server certificate like ``server_cert``, signed by ``ca``, that expired a day ago."""

    def server_files(self, *, require_client_cert: bool = False) -> TlsFiles:
        if require_client_cert:
            return TlsFiles(
                self.server_cert, self.server_key, self.ca, self.client_cert, self.client_key
            )
        return TlsFiles(self.server_cert, self.server_key, self.ca)

    def expired_server_files(self) -> TlsFiles:
        return TlsFiles(self.expired_cert, self.expired_key, self.ca)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _ca(common_name: str, path: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _leaf(
    common_name: str,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    *,
    server: bool,
    cert_path: Path,
    key_path: Path,
    expired: bool = False,
) -> None:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2 if expired else 0)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            # a server's certificate also authenticates it as a client: the nodes of a Redis
            # Cluster with tls-cluster yes present it to each other
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                if server
                else [ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_path)


def make_pki(directory: Path) -> Pki:
    """Write the PKI's PEM files into ``directory`` (readable by all but the keys, 0600: the
    servers get their own copies where they need them)."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(
        ca=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
        wrong_ca=directory / "wrong-ca.crt",
        expired_cert=directory / "expired.crt",
        expired_key=directory / "expired.key",
    )
    ca = _ca("esctl test CA", pki.ca)
    _leaf("localhost", ca, server=True, cert_path=pki.server_cert, key_path=pki.server_key)
    _leaf("esctl", ca, server=False, cert_path=pki.client_cert, key_path=pki.client_key)
    _leaf(
        "localhost", ca, server=True, cert_path=pki.expired_cert, key_path=pki.expired_key,
        expired=True,
    )  # fmt: skip
    _ca("esctl wrong CA", pki.wrong_ca)
    return pki


def start_tls_cluster(pki: Pki, primaries: int = 3) -> list[servers.LocalRedis]:
    """A Redis Cluster of TLS-only nodes (``tls-cluster yes``: the bus and the addresses the
    nodes announce are TLS too), every slot served and every node agreeing before it returns.
    Stop the nodes (by pid) with ``stop()`` on each; they are stopped here on a failure."""
    redis_cli = shutil.which("redis-cli")
    if redis_cli is None:
        raise FileNotFoundError("redis-cli is not installed (needed for --cluster create)")
    nodes: list[servers.LocalRedis] = []
    try:
        for _ in range(primaries):
            args = [
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-port", str(servers.free_port()), "--cluster-node-timeout", "1000",
                "--tls-cluster", "yes",
            ]  # fmt: skip
            nodes.append(servers.start_redis(tls=pki.server_files(), extra_args=args))
        command = [
            redis_cli, "--tls", "--cacert", str(pki.ca),
            "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes), "--cluster-yes",
        ]  # fmt: skip
        created = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-2000:]}")
        deadline = time.monotonic() + 30
        while not all(_cluster_ok(node, pki, len(nodes)) for node in nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the TLS cluster did not reach cluster_state:ok")
            time.sleep(0.05)
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


def _cluster_ok(node: servers.LocalRedis, pki: Pki, size: int) -> bool:
    try:
        with redis.Redis.from_url(node.url, ssl_ca_certs=str(pki.ca), socket_timeout=2) as client:
            info = client.cluster("info")
    except redis.RedisError:
        return False
    return (
        info.get("cluster_state") == "ok"
        and int(info.get("cluster_known_nodes", 0)) == size
        and int(info.get("cluster_slots_ok", 0)) == 16384
    )
