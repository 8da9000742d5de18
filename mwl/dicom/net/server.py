"""The DICOM listener: accepts connections on the plain and TLS ports, counts and limits them.

One thread waits in ``poll`` on the listening sockets and a wake-up pipe, so it
costs nothing between connections. Each accepted connection gets a thread of its
own (:class:`~mwl.dicom.net.association.Association`). The counts behind the
limits live here:

- ``max_associations``: established associations in all;
- ``max_per_address``: established associations from one IP address (AE titles
  are self-declared, so the address is what stops a single host);
- ``max_per_ae``: established associations of one calling AE title.

An A-ASSOCIATE-RQ over one of them is answered A-ASSOCIATE-RJ rejected-transient,
service-provider (presentation), local limit exceeded. Connections that have not
yet sent their A-ASSOCIATE-RQ are bounded too (twice the per-address limit from
one address, and ``max_associations`` more in all): beyond that a connection is
closed at once, before it costs a thread. Each limit, when hit, writes one
rate-limited log line.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from pynetdicom.presentation import PresentationContext

from mwl.dicom.net.association import Association, LayerSettings
from mwl.dicom.net.negotiation import (
    AssociateRequest,
    Rejection,
    local_limit_exceeded,
    supported_contexts,
)
from mwl.dicom.net.service import Services
from mwl.listening import Listener, Wakeup, listening_socket, ready_listeners
from mwl.operations import metrics
from mwl.proxy_protocol import Balancers, ProxyHeaderError, peer_behind
from mwl.ratelog import RateLimitedLog
from mwl.tls import ReloadingContext, peer_subject

logger = logging.getLogger(__name__)

# Kernel send buffer of each association: enough for a long answer at LAN and WAN
# speeds (a bandwidth-delay product of 100 Mbit/s over 40 ms), and a bound on what a
# modality that stops reading leaves queued (set explicitly, the kernel does not
# grow it by autotuning). It also bounds what is already in flight when a C-CANCEL
# is read.
SEND_BUFFER_BYTES = 512 * 1024
# Back-off when accept fails for want of file descriptors: the accept thread then
# sleeps instead of spinning on a socket that stays readable.
_EMFILE_BACKOFF = 0.1
_STOP_JOIN_SECONDS = 5.0


@dataclass(frozen=True)
class AssociationLimits:
    """How many associations are served at once: in all, per address, per calling AE."""

    max_associations: int = 500
    max_per_address: int = 50
    max_per_ae: int = 20


# Decides, per A-ASSOCIATE-RQ, on what the layer does not know: allowed callers, TLS
# required by a profile. Arguments: the association (address, TLS) and its request.
CallerPolicy = Callable[[Association, AssociateRequest], Rejection | None]


class AssociationServer:
    """Serves DICOM associations on one or more ports until :meth:`shutdown`.

    Parameters
    ----------
    settings
        Timeouts and limits of each association, the AE title.
    services
        The handlers by SOP class.
    limits
        The association counts.
    caller_policy
        Extra admission checks (calling-AE allow-list, TLS required by a profile).
    proxy_protocol_from
        Balancers whose connections start with a PROXY protocol header
        (:mod:`mwl.proxy_protocol`); the caller it names is the association's address.
    """

    def __init__(
        self,
        settings: LayerSettings,
        services: Services,
        limits: AssociationLimits = AssociationLimits(),
        caller_policy: CallerPolicy | None = None,
        proxy_protocol_from: tuple[str, ...] = (),
    ) -> None:
        self.settings = settings
        self.services = services
        self.limits = limits
        self._caller_policy = caller_policy
        # Lines a peer can provoke at will, at most one per kind and minute.
        self.rate_log = RateLimitedLog(logger)
        self._supported: list[PresentationContext] = supported_contexts(services.abstract_syntaxes)
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()
        self._open: set[Association] = set()
        self._threads: dict[Association, threading.Thread] = {}
        self._open_by_address: Counter[str] = Counter()
        self._established_by_address: Counter[str] = Counter()
        self._established_by_ae: Counter[str] = Counter()
        self._established: set[Association] = set()
        self._wakeup = Wakeup()
        self._stopping = threading.Event()
        self._accept_thread: threading.Thread | None = None
        self._serial = 0
        self._balancers = Balancers(proxy_protocol_from)
        self._awaiting_header = 0  # balancer connections whose PROXY header is not read yet

    # -- ports ------------------------------------------------------------------------

    def listen(self, host: str, port: int, tls: ReloadingContext | None = None) -> tuple[str, int]:
        """Bind and listen on ``(host, port)``; TLS when ``tls`` is given. Before :meth:`start`.

        Returns
        -------
        tuple
            The address bound (the real port when ``port`` is 0).

        Raises
        ------
        OSError
            The address cannot be bound.
        """
        sock = listening_socket(host, port)
        self._listeners.append(Listener(sock, tls))
        bound = sock.getsockname()
        return str(bound[0]), int(bound[1])

    @property
    def addresses(self) -> list[tuple[str, int, bool]]:
        """``(host, port, tls)`` of every listening socket."""
        out = []
        for listener in self._listeners:
            host, port = listener.sock.getsockname()[:2]
            out.append((str(host), int(port), listener.tls is not None))
        return out

    def start(self) -> None:
        """Start accepting on every port given to :meth:`listen`."""
        if self._accept_thread is not None:
            raise RuntimeError("the DICOM server is already running")
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="dicom-accept", daemon=True
        )
        self._accept_thread.start()

    @property
    def serving(self) -> bool:
        """Whether the listeners are bound and accepting (for ``/health``)."""
        thread = self._accept_thread
        return thread is not None and thread.is_alive() and not self._stopping.is_set()

    # -- counts -----------------------------------------------------------------------

    @property
    def open_associations(self) -> int:
        """Connections open now: negotiating or established."""
        with self._lock:
            return len(self._open)

    @property
    def established_associations(self) -> int:
        """Associations established now."""
        with self._lock:
            return len(self._established)

    def admit(self, association: Association, request: AssociateRequest) -> Rejection | None:
        """The admission policy of each association: the limits, then the caller policy."""
        if self._caller_policy is not None:
            rejection = self._caller_policy(association, request)
            if rejection is not None:
                self.rate_log.info(
                    f"caller:{association.address[0]}:{request.calling_ae_title}",
                    "DICOM association from %s (%s) rejected: %s",
                    association.peer,
                    ascii(request.calling_ae_title),
                    rejection.why,
                )
                return rejection
        address, ae = association.address[0], request.calling_ae_title
        limits = self.limits
        with self._lock:
            if len(self._established) >= limits.max_associations:
                why = f"{limits.max_associations} associations already (dicom_max_associations)"
                key = "total"
            elif self._established_by_address[address] >= limits.max_per_address:
                why = (
                    f"{limits.max_per_address} associations from {address} already "
                    "(dicom_max_associations_per_address)"
                )
                key = f"address:{address}"
            elif self._established_by_ae[ae] >= limits.max_per_ae:
                why = (
                    f"{limits.max_per_ae} associations of {ae} already "
                    "(dicom_max_associations_per_ae)"
                )
                key = f"ae:{ae}"
            else:
                self._established.add(association)
                self._established_by_address[address] += 1
                self._established_by_ae[ae] += 1
                return None
        self.rate_log.warning(
            f"limit:{key}",
            "DICOM association from %s (%s) rejected, local limit exceeded: %s",
            association.peer,
            ascii(ae),
            why,
        )
        return local_limit_exceeded(why)

    def _forget(self, association: Association) -> None:
        address = association.address[0]
        with self._lock:
            if association in self._open:
                metrics.association_closed()
            self._open.discard(association)
            self._threads.pop(association, None)
            _decrement(self._open_by_address, address)
            if association in self._established:
                self._established.discard(association)
                _decrement(self._established_by_address, address)
                _decrement(self._established_by_ae, association.calling_ae_title)

    # -- accepting --------------------------------------------------------------------

    def _accept_loop(self) -> None:
        for listener in ready_listeners(self._listeners, self._wakeup, self._stopping):
            self._accept(listener)

    def _accept(self, listener: Listener) -> None:
        try:
            sock, address = listener.sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                self.rate_log.warning(
                    "accept:resources",
                    "DICOM listener cannot accept a connection: %s; backing off",
                    os.strerror(exc.errno or 0),
                )
                # Sleeping here is the back-off; the pending connection stays queued.
                self._stopping.wait(_EMFILE_BACKOFF)
                return
            raise
        host, port = str(address[0]), int(address[1])
        if host in self._balancers:
            self._accept_proxied(sock, host, port, listener)
            return
        association = self._open_association(sock, host, port, listener)
        if association is None:
            return
        with self._lock:
            self._serial += 1
            thread = threading.Thread(
                target=association.run, name=f"dicom-assoc-{self._serial}", daemon=True
            )
            self._threads[association] = thread
        thread.start()

    def _open_association(
        self, sock: socket.socket, host: str, port: int, listener: Listener
    ) -> Association | None:
        """The association of an accepted connection from ``host``, counted; None if refused."""
        if not self._room_for(host):
            sock.close()
            return None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        subject = None
        if listener.tls is not None:
            try:
                sock = listener.tls.current().wrap_socket(
                    sock, server_side=True, do_handshake_on_connect=False
                )
            except (ssl.SSLError, OSError) as exc:
                logger.warning("DICOM TLS connection from %s refused: %s", host, exc)
                sock.close()
                self._release_room(host)
                return None
            subject = _subject_if_verified
        association = Association(
            sock,
            (host, port),
            settings=self.settings,
            services=self.services,
            supported=self._supported,
            policy=self,
            on_close=self._forget,
            certificate_subject=subject,
            rate_log=self.rate_log,
        )
        with self._lock:
            self._open.add(association)
            metrics.association_opened()
        return association

    def _accept_proxied(
        self, sock: socket.socket, host: str, port: int, listener: Listener
    ) -> None:
        """A balancer's connection: its own thread reads the PROXY header, then serves it."""
        with self._lock:
            full = self._awaiting_header >= self.limits.max_associations
            if not full:
                self._awaiting_header += 1
                self._serial += 1
                serial = self._serial
        if full:
            sock.close()
            self.rate_log.warning(
                "proxy:total", "DICOM connection from balancer %s closed at once: too many", host
            )
            return
        thread = threading.Thread(
            target=self._run_proxied,
            args=(sock, host, port, listener),
            name=f"dicom-assoc-{serial}",
            daemon=True,
        )
        try:
            thread.start()
        except RuntimeError:  # no thread to be had
            with self._lock:
                self._awaiting_header -= 1
            sock.close()

    def _run_proxied(self, sock: socket.socket, host: str, port: int, listener: Listener) -> None:
        try:
            caller = peer_behind(sock, (host, port))
        except ProxyHeaderError as exc:
            self.rate_log.warning(
                f"proxy:{host}",
                "DICOM connection from balancer %s closed: no valid PROXY protocol header (%s)",
                host,
                exc,
            )
            sock.close()
            return
        finally:
            with self._lock:
                self._awaiting_header -= 1
        association = self._open_association(sock, *caller, listener)
        if association is None:
            return
        logger.debug("DICOM connection from %s:%d through balancer %s", *caller, host)
        with self._lock:
            self._threads[association] = threading.current_thread()
        association.run()

    def _room_for(self, host: str) -> bool:
        """Count a new connection from ``host``, unless its not-yet-associated share is full."""
        limits = self.limits
        with self._lock:
            if self._stopping.is_set():
                return False
            from_host = self._open_by_address[host]
            negotiating = len(self._open) - len(self._established)
            if from_host >= 2 * limits.max_per_address:
                key, why = f"open:{host}", f"{from_host} connections from {host} open"
            elif negotiating >= limits.max_associations:
                key, why = "open:total", f"{negotiating} connections not yet associated"
            else:
                self._open_by_address[host] += 1
                return True
        self.rate_log.warning(
            key, "DICOM connection from %s closed at once: %s (limits of the listener)", host, why
        )
        return False

    def _release_room(self, host: str) -> None:
        with self._lock:
            _decrement(self._open_by_address, host)

    # -- stopping ---------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop accepting, end every association, close the ports. Idempotent."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._wakeup.wake()
        if self._accept_thread is not None:
            self._accept_thread.join(_STOP_JOIN_SECONDS)
        for listener in self._listeners:
            listener.sock.close()
        with self._lock:
            open_now = list(self._open)
            threads = list(self._threads.values())
        for association in open_now:
            association.stop()
        deadline = time.monotonic() + _STOP_JOIN_SECONDS
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._wakeup.close()


def _subject_if_verified(sock: socket.socket) -> str:
    return peer_subject(sock) if isinstance(sock, ssl.SSLSocket) else ""


def _decrement(counter: Counter[str], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
