"""MLLP framing without sockets: frames from any split of the stream, junk, size cap."""

from __future__ import annotations

import logging

import pytest

from mwl.hl7.mllp import FramingError, MllpFramer, frame

from .conftest import all_samples

SAMPLES = all_samples()


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_split_point_gives_the_same_frames(name: str) -> None:
    payload = SAMPLES[name]
    # Two frames back to back, with the blank line and NULs some senders put between.
    stream = frame(payload) + b"\r\n\x00" + frame(payload)
    for cut in range(len(stream) + 1):
        framer = MllpFramer()
        frames = framer.feed(stream[:cut]) + framer.feed(stream[cut:])
        assert frames == [payload, payload], cut
        assert not framer.in_frame


def test_byte_by_byte_and_many_frames_in_one_read() -> None:
    payloads = list(SAMPLES.values())
    stream = b"".join(frame(p) for p in payloads)
    framer = MllpFramer()
    assert framer.feed(stream) == payloads
    framer = MllpFramer()
    out: list[bytes] = []
    for byte in stream:
        out += framer.feed(bytes([byte]))
    assert out == payloads


def test_bytes_outside_frames_are_skipped_and_logged_once_per_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    framer = MllpFramer()
    with caplog.at_level(logging.WARNING, logger="mwl.hl7.mllp"):
        assert framer.feed(b"\x00\x00junk") == []
        assert framer.feed(b"more junk\r\n") == []
        assert framer.feed(frame(b"MSH|1")) == [b"MSH|1"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "outside an MLLP frame" in warnings[0].getMessage()


def test_missing_cr_after_fs_is_tolerated() -> None:
    framer = MllpFramer()
    assert framer.feed(b"\x0bMSH|A\x1c\x0bMSH|B\x1c\r") == [b"MSH|A", b"MSH|B"]


def test_new_start_block_inside_a_frame_restarts_it() -> None:
    framer = MllpFramer()
    assert framer.feed(b"\x0bMSH|broken\x0bMSH|whole\x1c\r") == [b"MSH|whole"]


def test_oversized_frame_raises_with_its_beginning_and_resets() -> None:
    framer = MllpFramer(max_frame_bytes=1024)
    head = b"MSH|^~\\&|RIS|H|MWL|H|20261121||ORM^O01|BIG1|P|2.3.1\r"
    with pytest.raises(FramingError) as info:
        framer.feed(b"\x0b" + head + b"X" * 600)
        framer.feed(b"X" * 600)
    assert info.value.partial.startswith(head)
    assert not framer.in_frame
    # The rest of the big frame is skipped; the next frame is read normally.
    assert framer.feed(b"X" * 100 + b"\x1c\r" + frame(b"MSH|ok")) == [b"MSH|ok"]


def test_frame_exactly_at_the_limit_is_accepted() -> None:
    framer = MllpFramer(max_frame_bytes=1024)
    assert framer.feed(frame(b"M" * 1024)) == [b"M" * 1024]


def test_frame_wraps_payload() -> None:
    assert frame(b"MSH|x") == b"\x0bMSH|x\x1c\r"
    assert MllpFramer.frame(b"MSH|x") == MllpFramer().frame(b"MSH|x") == frame(b"MSH|x")
