"""describe_message: a logged message split into named segments and fields, for people."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mwl.hl7.ack import build_ack
from mwl.hl7.describe import describe_message, field_names
from mwl.hl7.errors import Hl7MessageError
from mwl.hl7.grammar import read_header
from mwl.operations.message_view import FieldView, MessageView, SegmentView

from .conftest import all_samples, replace_field, sample


def fields_of(view: MessageView, segment: str, index: int = 0) -> dict[str, FieldView]:
    found = [s for s in view.segments if s.name == segment]
    return {f.position: f for f in found[index].fields}


def segment(view: MessageView, name: str) -> SegmentView:
    return next(s for s in view.segments if s.name == name)


def test_segments_in_order_with_field_names_of_the_message_version() -> None:
    view = describe_message(sample("omi_o23_nw.hl7"))
    assert view.version == "2.5.1"
    assert view.problem == ""
    assert [s.name for s in view.segments] == [
        "MSH",
        "PID",
        "PV1",
        "ORC",
        "TQ1",
        "OBR",
        "IPC",
        "IPC",
    ]
    assert segment(view, "PID").description == "Patient Identification"
    pid = fields_of(view, "PID")
    name = pid["PID-5"]
    assert (name.name, name.value, name.label) == (
        "Patient Name",
        "Sample^Bernd",
        "PID-5 Patient Name",
    )
    assert [(c.position, c.name, c.value) for c in name.components] == [
        ("PID-5.1", "Family Name", "Sample"),
        ("PID-5.2", "Given Name", "Bernd"),
    ]
    assert pid["PID-8"].name == "Administrative Sex"
    assert "PID-2" not in pid  # empty fields are left out
    second_ipc = fields_of(view, "IPC", 1)
    assert second_ipc["IPC-4"].value == "SPS0005B"
    assert second_ipc["IPC-3"].name == "Study Instance UID"
    msh = fields_of(view, "MSH")
    assert (msh["MSH-1"].value, msh["MSH-2"].value) == ("|", "^~\\&")
    assert msh["MSH-2"].components == ()  # the delimiters are not split
    assert msh["MSH-9"].name == "Message Type"
    assert msh["MSH-10"].label == "MSH-10 Message Control ID"


def test_names_follow_the_version_and_fall_back_to_2_5() -> None:
    old = describe_message(sample("orm_o01_nw.hl7"))
    assert old.version == "2.3.1"
    assert fields_of(old, "PID")["PID-8"].name == "Sex"  # v2.3.1's name for PID-8
    unknown = describe_message(replace_field(sample("orm_o01_nw.hl7"), b"MSH", 12, b"9.9"))
    assert unknown.version == "2.5"
    assert fields_of(unknown, "PID")["PID-8"].name == "Administrative Sex"
    # TQ1 does not exist in v2.3.1; a v2.3.1 message carrying one still gets names.
    tq1 = replace_field(sample("orm_o01_nw_v25_tq1.hl7"), b"MSH", 12, b"2.3.1")
    view = describe_message(tq1)
    assert view.version == "2.3.1"
    assert fields_of(view, "TQ1")["TQ1-7"].name == "Start Date Time"


def test_z_segments_are_shown_with_the_names_the_mapping_knows() -> None:
    raw = sample("orm_o01_nw.hl7").rstrip(b"\r") + b"\rZXY|first^second|\r"
    view = describe_message(raw)
    zds = fields_of(view, "ZDS")["ZDS-1"]
    assert zds.name == "Study Instance UID"
    assert zds.components[0].value == "1.2.826.0.1.3680043.10.543.20261121.1"
    zxy = fields_of(view, "ZXY")["ZXY-1"]
    assert (zxy.name, zxy.label, segment(view, "ZXY").description) == ("", "ZXY-1", "")
    assert [(c.position, c.name, c.value) for c in zxy.components] == [
        ("ZXY-1.1", "", "first"),
        ("ZXY-1.2", "", "second"),
    ]


def test_repetitions_escapes_and_subcomponents() -> None:
    raw = replace_field(sample("omi_o23_nw.hl7"), b"PID", 3, b"ID1^^^HOSP~ID2^^^OTHER")
    raw = replace_field(raw, b"PID", 5, b"Smith\\S\\Jones^Ann")
    view = describe_message(raw)
    pid = fields_of(view, "PID")
    assert pid["PID-5"].value == "Smith\\S\\Jones^Ann"  # as sent
    assert pid["PID-5"].components[0].value == "Smith^Jones"  # unescaped
    positions = [(c.position, c.value) for c in pid["PID-3"].components]
    assert positions == [
        ("PID-3.1", "ID1"),
        ("PID-3.4", "HOSP"),
        ("PID-3[2].1", "ID2"),
        ("PID-3[2].4", "OTHER"),
    ]
    obr = fields_of(view, "OBR")
    assert obr["OBR-34"].value == "TEC01&Tech&Tom"
    assert obr["OBR-34"].components == ()  # one component: nothing more to show


def test_the_ack_we_sent_is_described_too() -> None:
    header = read_header(sample("orm_o01_nw.hl7"))
    error = Hl7MessageError(101, "PID-3", "the order has no patient ID")
    view = describe_message(build_ack(header, "AE", error))
    assert [s.name for s in view.segments][:2] == ["MSH", "MSA"]
    msa = fields_of(view, "MSA")
    assert (msa["MSA-1"].name, msa["MSA-1"].value) == ("Acknowledgment Code", "AE")
    assert msa["MSA-2"].value == "MSG00001"
    assert "ERR" in [s.name for s in view.segments]


def test_a_message_without_msh_shows_its_lines() -> None:
    view = describe_message(b"PID|1||P1\rOBR|1|X\r")
    assert view.segments == ()
    assert not view.readable
    assert view.raw_lines == ("PID|1||P1", "OBR|1|X")
    assert "MSH" in view.problem
    empty = describe_message(b"")
    assert (empty.segments, empty.raw_lines) == ((), ())


def test_bytes_invalid_in_the_charset_are_shown_replaced() -> None:
    raw = sample("omi_o23_nw.hl7").replace(b"Sample^Bernd", b"Sample^B\xffrnd")
    view = describe_message(raw)
    assert "UTF-8" in view.problem
    assert view.readable
    assert fields_of(view, "PID")["PID-5"].value == "Sample^B\ufffdrnd"
    assert any("B\ufffdrnd" in line for line in view.raw_lines)


def test_latin1_message_is_decoded_in_its_charset() -> None:
    view = describe_message(sample("orm_o01_nw_no_zds.hl7"))  # no MSH-18: default 8859/1
    assert view.problem == ""
    assert fields_of(view, "PID")["PID-5"].components[0].value == "Müller"


def test_every_sample_is_described_and_lookups_are_cached() -> None:
    field_names.cache_clear()
    for raw in all_samples().values():
        view = describe_message(raw)
        assert view.problem == ""
        assert all(s.raw for s in view.segments)
    misses = field_names.cache_info().misses
    big = sample("orm_o01_nw_details.hl7").rstrip(b"\r") + b"".join(
        b"\rOBX|%d|NM|29463-7^Body weight||%d|kg" % (i, 60 + i) for i in range(50)
    )
    view = describe_message(big)
    assert len(view.segments) > 50
    after_first = field_names.cache_info().misses
    describe_message(big)
    # The second time nothing is looked up again; OBX fields were looked up once each.
    assert field_names.cache_info().misses == after_first
    assert after_first - misses <= 12


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.builds(
            lambda head, tail: head + tail,
            st.sampled_from(list(all_samples().values())),
            st.binary(max_size=60),
        ),
        st.builds(
            lambda raw, cut: raw[:cut],
            st.sampled_from(list(all_samples().values())),
            st.integers(min_value=0, max_value=400),
        ),
    )
)
def test_any_input_is_described_without_error(raw: bytes) -> None:
    view = describe_message(raw)
    assert isinstance(view, MessageView)
    if view.segments:
        assert view.segments[0].name == "MSH"
