"""Throw-away TLS certificates for tests, made with the openssl command (synthetic names only)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.peers import OPENSSL


def _run(*args: str, cwd: Path) -> None:
    subprocess.run([str(OPENSSL), *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class Issued:
    """A key and its certificate (PEM files)."""

    key: Path
    cert: Path


def make_ca(folder: Path, name: str) -> Issued:
    """A self-signed CA (EC P-256)."""
    folder.mkdir(parents=True, exist_ok=True)
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    _run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key.name, cwd=folder)
    _run(
        "req",
        "-x509",
        "-new",
        "-key",
        key.name,
        "-sha256",
        "-days",
        "30",
        "-subj",
        f"/O=mwl tests/CN={name}",
        "-out",
        cert.name,
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )
    return Issued(key, cert)


def issue(
    ca: Issued, folder: Path, name: str, *, server: bool, days: int = 30, rsa: bool = False
) -> Issued:
    """A leaf certificate signed by ``ca``: for a server (127.0.0.1, localhost) or a client."""
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.crt"
    if rsa:
        _run("genrsa", "-out", key.name, "2048", cwd=folder)
    else:
        _run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key.name, cwd=folder)
    _run(
        "req",
        "-new",
        "-key",
        key.name,
        "-subj",
        f"/O=mwl tests/CN={name}",
        "-out",
        csr.name,
        cwd=folder,
    )
    extensions = folder / f"{name}.ext"
    usage = "serverAuth" if server else "clientAuth"
    lines = [f"extendedKeyUsage={usage}", "basicConstraints=CA:FALSE"]
    if server:
        lines.append("subjectAltName=IP:127.0.0.1,DNS:localhost")
    extensions.write_text("\n".join(lines) + "\n")
    _run(
        "x509",
        "-req",
        "-in",
        csr.name,
        "-CA",
        str(ca.cert),
        "-CAkey",
        str(ca.key),
        "-CAcreateserial",
        "-days",
        str(days),
        "-sha256",
        "-extfile",
        extensions.name,
        "-out",
        cert.name,
        cwd=folder,
    )
    return Issued(key, cert)
