"""MLLP framing, sans-IO: bytes from a socket in, complete HL7 frames out.

Minimal Lower Layer Protocol (HL7 v2.5.1 Appendix C, "MLLP release 1"): a frame is
``<VT> payload <FS><CR>``. The framer keeps no socket; the listener and the client
feed it whatever ``recv()`` returned, so a frame may arrive in many reads and one
read may hold several frames.
"""

from __future__ import annotations

import logging

from mwl.errors import MwlError

logger = logging.getLogger(__name__)

# The only place in the code base that knows the framing bytes.
START_BLOCK = b"\x0b"  # VT
END_BLOCK = b"\x1c"  # FS
CARRIAGE_RETURN = b"\x0d"  # CR, follows FS
FRAME_END = END_BLOCK + CARRIAGE_RETURN

DEFAULT_MAX_FRAME_BYTES = 1_048_576


class FramingError(MwlError):
    """A frame broke the framing rules (too large); ``partial`` holds its first bytes.

    The listener reads the MSH segment from ``partial`` to answer with a NAK before it
    closes the connection.
    """

    def __init__(self, reason: str, partial: bytes = b"") -> None:
        self.reason = reason
        self.partial = partial
        super().__init__(reason)


def frame(payload: bytes) -> bytes:
    """Wrap ``payload`` (one HL7 message) in an MLLP block.

    Parameters
    ----------
    payload
        The encoded message, segments separated by CR.

    Returns
    -------
    bytes
        ``VT + payload + FS + CR``.
    """
    return START_BLOCK + payload + FRAME_END


class MllpFramer:
    """Collects MLLP frames from a byte stream.

    Bytes outside a frame (NULs, blank lines, stray text some senders put between
    messages) are skipped; each contiguous run of them is logged once at WARNING,
    however many reads it spans, so a noisy peer cannot flood the log.

    Parameters
    ----------
    max_frame_bytes
        Largest payload accepted; a longer frame raises :class:`FramingError`.
    """

    # ``MllpFramer.frame(payload)`` is :func:`frame`, for callers holding only the class.
    frame = staticmethod(frame)

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._in_frame = False
        self._skipped = 0  # bytes skipped in the current run outside a frame
        self._skip_logged = False
        self._expect_cr = False

    @property
    def in_frame(self) -> bool:
        """True when a start block was seen and its end has not arrived yet."""
        return self._in_frame

    @property
    def buffered(self) -> int:
        """Bytes of the frame in progress."""
        return len(self._buffer)

    def reset(self) -> None:
        """Drop any frame in progress (after an error) and wait for the next start block."""
        self._buffer.clear()
        self._in_frame = False
        self._skipped = 0
        self._skip_logged = False
        self._expect_cr = False

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes from the stream; return the payloads of the frames now complete.

        Parameters
        ----------
        data
            Whatever the last read returned (may be empty).

        Returns
        -------
        list of bytes
            Payloads without the framing bytes, in the order they arrived.

        Raises
        ------
        FramingError
            When the frame in progress exceeds ``max_frame_bytes``. The framer is
            reset: it skips bytes until the next start block.
        """
        frames: list[bytes] = []
        view = memoryview(data)
        pos = 0
        end = len(data)
        while pos < end:
            if self._expect_cr:
                # The CR of an FS+CR trailer whose FS ended the previous read.
                self._expect_cr = False
                if data[pos : pos + 1] == CARRIAGE_RETURN:
                    pos += 1
                    continue
            if not self._in_frame:
                start = data.find(START_BLOCK, pos)
                if start < 0:
                    self._note_skipped(end - pos)
                    break
                if start > pos:
                    self._note_skipped(start - pos)
                self._end_skip_run()
                self._in_frame = True
                pos = start + 1
                continue
            # Inside a frame: look for FS; a CR must follow it (possibly in the next read).
            stop = data.find(END_BLOCK, pos)
            restart = data.find(START_BLOCK, pos, stop if stop >= 0 else end)
            if restart >= 0:
                # A new start block before the end of the frame: the sender gave up on
                # the previous message and started again. Keep the new one.
                logger.warning(
                    "MLLP start block inside a frame; dropping %d bytes of an unfinished frame",
                    len(self._buffer) + restart - pos,
                )
                self._buffer.clear()
                pos = restart + 1
                continue
            if stop < 0:
                self._append(view[pos:end])
                break
            self._append(view[pos:stop])
            frames.append(bytes(self._buffer))
            self._buffer.clear()
            self._in_frame = False
            pos = stop + 1
            # FS + CR is the trailer; a missing CR is tolerated (lenient on input).
            if pos < end and data[pos : pos + 1] == CARRIAGE_RETURN:
                pos += 1
            elif pos == end:
                self._expect_cr = True
        return frames

    def _append(self, chunk: memoryview) -> None:
        if len(self._buffer) + len(chunk) > self.max_frame_bytes:
            partial = bytes(self._buffer[:4096]) + bytes(chunk[: max(0, 4096 - len(self._buffer))])
            size = len(self._buffer) + len(chunk)
            self.reset()
            raise FramingError(
                f"MLLP frame exceeds {self.max_frame_bytes} bytes (at least {size})", partial
            )
        self._buffer += chunk

    def _note_skipped(self, count: int) -> None:
        self._skipped += count
        if not self._skip_logged:
            self._skip_logged = True
            logger.warning("skipping bytes outside an MLLP frame (no start block)")

    def _end_skip_run(self) -> None:
        if self._skipped:
            logger.debug("skipped %d bytes before an MLLP start block", self._skipped)
        self._skipped = 0
        self._skip_logged = False
