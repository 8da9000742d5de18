"""TLS of the listeners (BCP 195, RFC 8996/9325; for DICOM PS3.15 B.12): server contexts.

- TLS 1.2 at least, 1.3 preferred (OpenSSL negotiates the highest both sides
  have); 1.0 and 1.1 never (RFC 8996).
- On TLS 1.2 only forward-secret AEAD suites: ECDHE with AES-GCM or
  ChaCha20-Poly1305 (RFC 9325 4.2); TLS 1.3's suites are all AEAD already.
- No compression, no renegotiation, no session tickets across restarts.
- With a CA file, client certificates are required and verified against it.

The certificate, key and CA files are watched: when one of them changes on disk,
the next connection gets a context built from the new files, without a restart. A
change that does not load (a key that does not fit the certificate, a half-written
file) keeps the previous context and is logged.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

logger = logging.getLogger(__name__)

# RFC 9325 4.2: the recommended TLS 1.2 suites, in OpenSSL's names.
TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)
# Certificates this close to their end are logged at WARNING on every load.
EXPIRY_WARNING = dt.timedelta(days=30)
# How often the files' modification times are looked at (at a connection, never idle).
_CHECK_INTERVAL = 1.0
# A certificate within EXPIRY_WARNING of its end is named again this often while in use
# (at a connection), not only when it is loaded.
EXPIRY_REMINDER_SECONDS = 86400.0


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files of the TLS port: certificate chain, private key, optional client CA."""

    cert: Path
    key: Path
    ca: Path | None = None


@dataclass(frozen=True)
class CertificateInfo:
    """What the loaded server certificate says about itself."""

    subject: str
    not_after: dt.datetime

    @property
    def days_left(self) -> float:
        """Days until it expires (negative once expired)."""
        return (self.not_after - dt.datetime.now(dt.UTC)).total_seconds() / 86400


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """A server-side context with the BCP 195 profile, loaded from ``files``.

    Raises
    ------
    ssl.SSLError, OSError
        A file cannot be read, or the key does not fit the certificate.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_TICKET
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    context.load_cert_chain(files.cert, files.key)
    if files.ca is not None:
        context.load_verify_locations(cafile=files.ca)
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def _file_stamps(paths: tuple[Path | None, ...]) -> tuple[tuple[int, int], ...]:
    """Modification time and size of each file ((0, 0): absent or unset): a change reloads."""
    out = []
    for path in paths:
        try:
            st = os.stat(path) if path is not None else None
        except OSError:
            st = None
        out.append((st.st_mtime_ns, st.st_size) if st else (0, 0))
    return tuple(out)


def _log_certificate(what: str, verb: str, path: Path, suffix: str = "") -> CertificateInfo:
    """Name a loaded certificate, its subject and expiry; WARNING near it, ERROR past it."""
    info = certificate_info(path)
    level = logging.WARNING if info.days_left < EXPIRY_WARNING.days else logging.INFO
    if info.days_left < 0:
        level = logging.ERROR
    logger.log(
        level,
        "%s %s: %s, valid until %s (%.0f days left)%s",
        what,
        verb,
        info.subject,
        info.not_after.strftime("%Y-%m-%d %H:%M UTC"),
        info.days_left,
        suffix,
    )
    return info


def certificate_info(path: Path) -> CertificateInfo:
    """Subject and expiry of the first certificate in a PEM file."""
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    return CertificateInfo(certificate.subject.rfc4514_string(), certificate.not_valid_after_utc)


def peer_subject(sock: ssl.SSLSocket) -> str:
    """The verified client certificate's subject, or "" when the client sent none."""
    der = sock.getpeercert(binary_form=True)
    if not der:
        return ""
    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


class ReloadingContext:
    """The current TLS context, rebuilt when its files change.

    Parameters
    ----------
    files
        The PEM files.

    Raises
    ------
    ssl.SSLError, OSError
        The files do not load at start (then the broker does not start).
    """

    def __init__(self, files: TlsFiles, service: str = "DICOM") -> None:
        self.files = files
        self.service = service
        self._lock = threading.Lock()
        self._stamp = self._stamps()
        self._context = server_context(files)
        self.certificate = self._log_loaded("loaded")
        self._checked = self._reminded = time.monotonic()

    def _stamps(self) -> tuple[tuple[int, int], ...]:
        return _file_stamps((self.files.cert, self.files.key, self.files.ca))

    def _log_loaded(self, verb: str) -> CertificateInfo:
        required = "; client certificates required" if self.files.ca else ""
        return _log_certificate(f"{self.service} TLS certificate", verb, self.files.cert, required)

    def current(self) -> ssl.SSLContext:
        """The context for a new connection: reloaded first when a file changed."""
        now = time.monotonic()
        with self._lock:
            if now - self._reminded >= EXPIRY_REMINDER_SECONDS:
                self._reminded = now
                if self.certificate.days_left < EXPIRY_WARNING.days:
                    self._log_loaded("in use")
            if now - self._checked < _CHECK_INTERVAL:
                return self._context
            self._checked = now
            stamp = self._stamps()
            if stamp == self._stamp:
                return self._context
            self._stamp = stamp
            try:
                context = server_context(self.files)
                certificate = self._log_loaded("reloaded")
            except (ssl.SSLError, OSError, ValueError, KeyError) as exc:
                logger.error(
                    "%s TLS files changed but do not load (%s); the previous certificate "
                    "stays in use",
                    self.service,
                    exc,
                )
                return self._context
            self._context, self.certificate = context, certificate
            return context


@dataclass(frozen=True)
class ClientTlsFiles:
    """The PEM files of a TLS client: the CA that signs the server, an optional own certificate."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None


def client_context(files: ClientTlsFiles) -> ssl.SSLContext:
    """A client-side context: TLS 1.2 at least, the server verified against ``files.ca``.

    Raises
    ------
    ssl.SSLError, OSError
        A file cannot be read, or the key does not fit the certificate.
    """
    context = ssl.create_default_context(cafile=files.ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if files.cert is not None and files.key is not None:
        context.load_cert_chain(files.cert, files.key)
    return context


class ReloadingClientContext:
    """The current client context, rebuilt when one of its files changed since the last use.

    Built when a connection is opened; the own certificate's expiry is logged at
    every load (WARNING within :data:`EXPIRY_WARNING`, ERROR once expired).

    Raises
    ------
    ssl.SSLError, OSError
        The files do not load at start.
    """

    def __init__(self, files: ClientTlsFiles, service: str) -> None:
        self.files = files
        self.service = service
        self._lock = threading.Lock()
        self._stamp = self._stamps()
        self._context = client_context(files)
        self._log_loaded("loaded")

    def _stamps(self) -> tuple[tuple[int, int], ...]:
        return _file_stamps((self.files.ca, self.files.cert, self.files.key))

    def _log_loaded(self, verb: str) -> None:
        if self.files.cert is None:
            logger.info("%s TLS CA %s: %s", self.service, verb, self.files.ca)
            return
        _log_certificate(f"{self.service} TLS client certificate", verb, self.files.cert)

    def current(self) -> ssl.SSLContext:
        """The context for a new connection: reloaded first when a file changed."""
        with self._lock:
            stamp = self._stamps()
            if stamp == self._stamp:
                return self._context
            self._stamp = stamp
            try:
                context = client_context(self.files)
                self._log_loaded("reloaded")
            except (ssl.SSLError, OSError, ValueError) as exc:
                logger.error(
                    "%s TLS files changed but do not load (%s); the previous ones stay in use",
                    self.service,
                    exc,
                )
                return self._context
            self._context = context
            return context
