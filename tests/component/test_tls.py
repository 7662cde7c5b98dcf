"""HTTPS on the daemon's port, with a self-signed certificate the test makes."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.component.fakes import worker_ports
from tests.conftest import FAKE_ENGINE_COMMAND
from tests.daemon import Daemon, free_port, write_config


def self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_the_daemon_serves_https_streaming_included(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    config = write_config(
        tmp_path / "vllama.toml",
        {
            "engine_command": FAKE_ENGINE_COMMAND,
            "tls_cert": str(cert),
            "tls_key": str(key),
            "runtime_dir": str(tmp_path / "run"),
            **worker_ports(),
        },
        {"m": {"model": "fake/m"}},
    )
    port = free_port()
    trust = ssl.create_default_context(cafile=str(cert))
    with Daemon(config, port, tmp_path / "vllama.log", scheme="https", verify=trust) as daemon:
        url = f"https://127.0.0.1:{port}"
        assert daemon.url == url
        with httpx.Client(verify=trust, timeout=60) as client:
            assert client.get(url + "/").status_code == 200
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
            with client.stream("POST", url + "/v1/chat/completions", json=body) as answer:
                events = [line for line in answer.iter_lines() if line.startswith("data: {")]
            assert answer.status_code == 200 and events
            assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"
        # Plain HTTP on the same port is not served.
        try:
            plain = httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code
        except httpx.HTTPError:
            plain = 0
        assert plain != 200
        assert "vllama listening" in daemon.log() and f"https://127.0.0.1:{port}" in daemon.log()
