"""What the association layer hands the services, and what they hand back.

The handlers (:mod:`mwl.dicom.handlers`, :mod:`mwl.dicom.mpps`) see a
:class:`DimseRequest`: who is calling, on which presentation context, the request
primitive and its data set. A C-FIND handler answers with a :class:`FindAnswer`
whose Identifiers the layer streams, reading the socket between them; the layer
then tells the handler how the answer ended (:class:`AnswerEnd`), so aborted and
cancelled queries reach the logs too, with the matches actually sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, N_CREATE, N_SET

from mwl.dicom.net.messages import DatasetTooLargeError, decode_data_set

# How an answer ended (AnswerEnd.reason).
COMPLETED = "completed"
CANCELLED = "cancelled"
ABORTED = "aborted"
RELEASED = "released"
CONNECTION_LOST = "connection lost"
TIMED_OUT = "timed out"
SHUTDOWN = "shutdown"


@dataclass(frozen=True)
class Requestor:
    """The peer of one association, as it introduced itself and as the socket shows it.

    ``ae_title`` is what the peer declared in its A-ASSOCIATE-RQ (self-declared: the
    address is what identifies a host); ``tls`` whether the association runs over
    DICOM TLS, and ``certificate_subject`` the verified client certificate's subject
    when client certificates are required.
    """

    ae_title: str
    address: str
    port: int
    called_ae_title: str
    tls: bool = False
    certificate_subject: str = ""


@dataclass(frozen=True)
class Context:
    """An accepted presentation context (PS3.8 7.1.1.13)."""

    context_id: int
    abstract_syntax: str
    transfer_syntax: str


@dataclass
class DimseRequest:
    """One DIMSE request to serve, with its association's facts.

    Attributes
    ----------
    requestor
        Who is asking.
    context
        The presentation context the request came on.
    message
        The request as pynetdicom's primitive (``C_FIND``, ``C_ECHO``,
        ``N_CREATE``, ``N_SET``).
    data
        The encoded data set (Identifier, attribute or modification list), None
        when there is none or it was over the limit (``data_too_large``).
    max_data_bytes
        The limit on the data set, raw and inflated.
    """

    requestor: Requestor
    context: Context
    message: C_FIND | C_ECHO | N_CREATE | N_SET
    data: bytes | None = None
    data_too_large: bool = False
    max_data_bytes: int = 64 * 1024
    _dataset: Dataset | None = field(default=None, repr=False)

    def dataset(self) -> Dataset:
        """The decoded data set (decoded once; pydicom reads its elements lazily).

        Raises
        ------
        DatasetTooLargeError
            Over ``max_data_bytes``, as received or once inflated.
        ValueError
            There is no data set, or it cannot be inflated.
        """
        if self.data_too_large:
            raise DatasetTooLargeError(self.max_data_bytes)
        if self._dataset is None:
            if self.data is None:
                raise ValueError("the request has no data set")
            self._dataset = decode_data_set(
                self.data, self.context.transfer_syntax, self.max_data_bytes
            )
        return self._dataset


@dataclass(frozen=True)
class AnswerEnd:
    """How one C-FIND answer ended, as the layer saw it on the wire.

    ``status`` is the final status sent (None when none could be sent: abort,
    reset, timeout, shutdown); ``matches`` the Pending responses handed whole to
    the socket; ``reason`` one of :data:`COMPLETED`, :data:`CANCELLED`,
    :data:`ABORTED`, :data:`RELEASED`, :data:`CONNECTION_LOST`, :data:`TIMED_OUT`,
    :data:`SHUTDOWN`.
    """

    status: int | None
    matches: int
    reason: str


@dataclass
class FindAnswer:
    """What a C-FIND handler answers: encoded Identifiers to stream, then a final status.

    Attributes
    ----------
    identifiers
        The Pending responses' Identifiers, encoded in the context's transfer
        syntax; iterated lazily while the layer sends, and closed (when it is a
        generator) once the answer ends early.
    pending_status
        The status of every Pending response (0xFF00, or 0xFF01).
    status
        The final status once every Identifier went out: Success, or a failure
        with ``status_dataset`` holding Error Comment and Offending Element.
    on_end
        Called once, whatever happens, with how the answer ended.
    """

    identifiers: Iterable[bytes] = ()
    pending_status: int = 0xFF00
    status: int = 0x0000
    status_dataset: Dataset | None = None
    on_end: Callable[[AnswerEnd], None] | None = None


FindHandler = Callable[[DimseRequest], FindAnswer]
EchoHandler = Callable[[DimseRequest], int]
# N-CREATE and N-SET: (status or status Dataset, attribute list or None), as pynetdicom's.
NHandler = Callable[[DimseRequest], "tuple[int | Dataset, Dataset | None]"]


@dataclass(frozen=True)
class Services:
    """The handlers of the SOP classes this AE serves, by abstract syntax UID."""

    echo: dict[str, EchoHandler] = field(default_factory=dict)
    find: dict[str, FindHandler] = field(default_factory=dict)
    n_create: dict[str, NHandler] = field(default_factory=dict)
    n_set: dict[str, NHandler] = field(default_factory=dict)

    @property
    def abstract_syntaxes(self) -> tuple[str, ...]:
        """Every SOP class served, in a stable order."""
        seen: dict[str, None] = {}
        for table in (self.echo, self.find, self.n_create, self.n_set):
            seen.update(dict.fromkeys(table))
        return tuple(seen)
