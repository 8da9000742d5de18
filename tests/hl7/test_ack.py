"""ACK content: MSH swapped, MSA-2, ERR per version, charset; hl7apy reads it back."""

from __future__ import annotations

import datetime as dt

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from mwl.hl7.ack import build_ack, error_location, escape
from mwl.hl7.errors import Hl7MessageError
from mwl.hl7.grammar import read_header

from .conftest import replace_field, sample

NOW = dt.datetime(2026, 11, 21, 9, 0, 0)


def segments(ack: bytes, codec: str = "ascii") -> dict[str, list[str]]:
    lines = ack.decode(codec).split("\r")
    out = {}
    for line in lines:
        fields = line.split("|")
        if fields[0] == "MSH":
            fields = ["MSH", "|"] + fields[1:]
        out[fields[0]] = fields
    return out


def test_aa_swaps_sender_and_receiver_and_keeps_version_and_charset() -> None:
    header = read_header(sample("orm_o01_nw.hl7"))
    ack = build_ack(header, "AA", now=NOW)
    seg = segments(ack)
    msh, msa = seg["MSH"], seg["MSA"]
    assert msh[3:7] == ["MWL", "RADIOLOGY", "RIS", "HOSPITAL"]
    assert msh[7] == "20261121090000"
    assert msh[9] == "ACK^O01^ACK"
    assert msh[10]  # a control ID of its own
    assert msh[11] == "P"
    assert msh[12] == "2.3.1"
    assert msh[18] == "8859/1"
    assert msa[1:3] == ["AA", "MSG00001"]
    assert "ERR" not in seg
    # hl7apy (strict structure) reads the ACK back.
    parsed = parse_message(
        ack.decode(), find_groups=False, validation_level=VALIDATION_LEVEL.TOLERANT
    )
    assert parsed.msa.msa_2.value == "MSG00001"


def test_ack_control_ids_differ() -> None:
    header = read_header(sample("orm_o01_nw.hl7"))
    first, second = (segments(build_ack(header, "AA"))["MSH"][10] for _ in range(2))
    assert first != second


def test_ae_v25_err_has_location_code_and_severity() -> None:
    header = read_header(sample("orm_o01_nw_v25_tq1.hl7"))
    error = Hl7MessageError(102, "ORC-7.4", "invalid date/time")
    seg = segments(build_ack(header, error.ack_code, error), "utf-8")
    assert seg["MSA"][1:3] == ["AE", "MSG00003"]
    err = seg["ERR"]
    assert err[2] == "ORC^1^7^1^4"
    assert err[3] == "102^Data type error^HL70357"
    assert err[4] == "E"
    assert err[8] == "invalid date/time"
    assert seg["MSH"][18] == "UNICODE UTF-8"


def test_ar_v231_uses_err_1_and_msa_3() -> None:
    header = read_header(sample("orm_o01_nw.hl7"))
    error = Hl7MessageError(200, "MSH-9", "message type ADT is not supported")
    seg = segments(build_ack(header, error.ack_code, error))
    assert seg["MSA"][1:4] == ["AR", "MSG00001", "message type ADT is not supported"]
    assert seg["ERR"][1] == "MSH^1^9^200&Unsupported message type&HL70357"


def test_error_text_delimiters_are_escaped() -> None:
    header = read_header(sample("orm_o01_nw_v25_tq1.hl7"))
    error = Hl7MessageError(101, "PID-3", "a|b^c&d~e\\f")
    err = segments(build_ack(header, "AE", error), "utf-8")["ERR"]
    assert err[8] == r"a\F\b\S\c\T\d\R\e\E\f"


def test_ack_is_encoded_in_the_message_charset() -> None:
    raw = replace_field(sample("orm_o01_nw.hl7"), b"MSH", 4, "Klinik Süd".encode("latin-1"))
    ack = build_ack(read_header(raw), "AA")
    assert "Klinik Süd".encode("latin-1") in ack
    raw = replace_field(sample("orm_o01_nw_v25_tq1.hl7"), b"MSH", 4, "Klinik Süd".encode())
    ack = build_ack(read_header(raw), "AA")
    assert "Klinik Süd".encode() in ack


def test_ack_without_header_still_answers() -> None:
    error = Hl7MessageError(100, "MSH", "the message has no MSH segment")
    seg = segments(build_ack(None, "AR", error))
    assert seg["MSA"][1] == "AR"
    assert seg["ERR"][2] == "MSH^1"


@pytest.mark.parametrize("version", [b"2.3", b"2.4", b"2.5.1"])
def test_ack_versions(version: bytes) -> None:
    header = read_header(replace_field(sample("orm_o01_nw.hl7"), b"MSH", 12, version))
    error = Hl7MessageError(101, "PID-3", "patient ID is empty")
    seg = segments(build_ack(header, "AE", error))
    assert seg["MSH"][12] == version.decode()
    if version == b"2.5.1":
        assert seg["ERR"][2] == "PID^1^3"
    else:
        assert seg["ERR"][1].startswith("PID^1^3^101&")


def test_error_location_and_escape_helpers() -> None:
    assert error_location("OBR-27.4") == ("OBR", "1", "27", "4")
    assert error_location("PID") == ("PID", "1", "", "")
    assert error_location("") == ("", "", "", "")
    assert escape("x|y") == r"x\F\y"
