"""Response building: only the requested keys, at their level, in the asked character set."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from mwl.dicom.response import ResponseBuilder, build_response
from mwl.domain import Code, SpsStatus, WorklistItem

ITEM = WorklistItem(
    patient_name="Øster^Émile",
    patient_id="P3",
    issuer_of_patient_id="HOSP",
    patient_birth_date="19900303",
    patient_sex="M",
    study_instance_uid="2.25.1",
    requested_procedure_id="RP3",
    accession_number="",
    requested_procedure_description="US of the abdomen",
    requested_procedure_code=Code("RPC3", "99LOCAL", "US Abdomen"),
    requested_procedure_priority="ROUTINE",
    requesting_physician="",
    referring_physician_name="Łukasz^Żółw",
    placer_order_number="PL3",
    filler_order_number="",
    scheduled_procedure_step_id="S4",
    modality="US",
    scheduled_station_ae_title="US01",
    scheduled_station_name="US-1",
    scheduled_procedure_step_location="",
    start=dt.datetime(2026, 11, 23, 10, 5, 30),
    scheduled_performing_physician_name="",
    scheduled_procedure_step_description="US abdomen",
    scheduled_protocol_codes=(Code("P1", "99LOCAL", "Liver"), Code("P2", "99LOCAL", "Kidney")),
    scheduled_procedure_step_status=SpsStatus.SCHEDULED,
)


def encode(ds: Dataset) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return buffer.getvalue()


def decode(data: bytes) -> Dataset:
    buffer = DicomBytesIO(data)
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    return dcmread(buffer, force=True)


def write(ds: Dataset, implicit: bool) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
    write_dataset(buffer, ds)
    return buffer.getvalue()


def read(data: bytes, implicit: bool) -> Dataset:
    buffer = DicomBytesIO(data)
    buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
    return dcmread(buffer, force=True)


def request(**top: str) -> Dataset:
    ds = Dataset()
    for keyword, value in top.items():
        setattr(ds, keyword, value)
    return ds


def test_only_requested_top_level_keys():
    response = build_response(ITEM, request(PatientID="", AccessionNumber="", PatientSex=""))
    assert [e.keyword for e in response] == [
        "SpecificCharacterSet",
        "AccessionNumber",
        "PatientID",
        "PatientSex",
    ]
    assert response.PatientID == "P3"
    assert response.AccessionNumber == ""  # Type 2, unknown: present and empty
    assert response.PatientSex == "M"


def test_sps_item_holds_exactly_the_requested_item_keys():
    asked = request(PatientID="")
    sps = Dataset()
    sps.ScheduledProcedureStepStartDate = ""
    sps.ScheduledProcedureStepStartTime = ""
    sps.ScheduledStationAETitle = ""
    sps.PreMedication = ""
    asked.ScheduledProcedureStepSequence = [sps]
    response = build_response(ITEM, asked)
    (item,) = response.ScheduledProcedureStepSequence
    assert {e.keyword for e in item} == {
        "ScheduledProcedureStepStartDate",
        "ScheduledProcedureStepStartTime",
        "ScheduledStationAETitle",
        "PreMedication",
    }
    assert item.ScheduledProcedureStepStartDate == "20261123"
    assert item.ScheduledProcedureStepStartTime == "100530"
    assert item.ScheduledStationAETitle == "US01"
    assert item.PreMedication == ""


@pytest.mark.parametrize("items", [[], [Dataset()]])
def test_zero_or_empty_item_sps_sequence_returns_all_item_keys(items):
    asked = request()
    asked.ScheduledProcedureStepSequence = items
    (item,) = build_response(ITEM, asked).ScheduledProcedureStepSequence
    assert item.Modality == "US"
    assert item.ScheduledProcedureStepID == "S4"
    assert item.ScheduledProcedureStepStatus == "SCHEDULED"
    assert [c.CodeMeaning for c in item.ScheduledProtocolCodeSequence] == ["Liver", "Kidney"]


def test_code_sequences_with_requested_item_keys():
    asked = request()
    code = Dataset()
    code.CodeValue = ""
    code.CodingSchemeDesignator = ""
    asked.RequestedProcedureCodeSequence = [code]
    asked.ReferencedStudySequence = []
    response = build_response(ITEM, asked)
    (got,) = response.RequestedProcedureCodeSequence
    assert {e.keyword for e in got} == {"CodeValue", "CodingSchemeDesignator"}
    assert (got.CodeValue, got.CodingSchemeDesignator) == ("RPC3", "99LOCAL")
    assert len(response.ReferencedStudySequence) == 0  # Type 2 sequence: present, empty


def test_unknown_and_private_keys_are_not_returned():
    asked = request(PatientID="", PatientComments="")
    asked.add_new(0x00091001, "LO", "")
    response = build_response(ITEM, asked)
    assert [e.keyword for e in response] == ["SpecificCharacterSet", "PatientID"]


def test_utf8_by_default_round_trips():
    response = build_response(ITEM, request(PatientName="", ReferringPhysicianName=""))
    data = encode(response)
    assert "Øster^Émile".encode() in data
    back = decode(data)
    assert str(back.PatientName) == "Øster^Émile"
    assert str(back.ReferringPhysicianName) == "Łukasz^Żółw"


def test_latin1_response_replaces_what_it_cannot_hold():
    response = build_response(
        ITEM, request(PatientName="", ReferringPhysicianName=""), charset="ISO_IR 100"
    )
    assert response.SpecificCharacterSet == "ISO_IR 100"
    data = encode(response)
    assert "Øster^Émile".encode("latin-1") in data
    back = decode(data)
    assert str(back.PatientName) == "Øster^Émile"
    # Ł, ł and Ż have no Latin-1 form: folded to L, l and Z; ó is Latin-1.
    assert str(back.ReferringPhysicianName) == "Lukasz^Zólw"


def test_default_repertoire_has_no_character_set_element():
    response = build_response(ITEM, request(PatientName=""), charset="")
    assert "SpecificCharacterSet" not in response
    assert str(response.PatientName) == "Oster^Emile"


def test_unknown_charset_is_refused():
    with pytest.raises(ValueError):
        build_response(ITEM, request(PatientName=""), charset="ISO_IR 999")


def test_characters_without_any_latin1_form_become_question_marks():
    item = replace(ITEM, patient_name="Yamada^Tarou=山田^太郎")
    response = build_response(item, request(PatientName=""), charset="ISO_IR 100")
    assert str(response.PatientName) == "Yamada^Tarou=??^??"
    utf8 = build_response(item, request(PatientName=""))
    assert str(utf8.PatientName) == "Yamada^Tarou=山田^太郎"


# --------------------------------------------------------------------------- ResponseBuilder

RICH = replace(
    ITEM,
    patient_name="Øster^Émile=",  # an empty trailing group: pydicom drops it
    accession_number="A1",
    study_instance_uid="2.25.1234",  # odd length: padded with NUL
    pregnancy_status="4",
    allergies="Penicillin\\Iodine",
    patient_weight="70.5",
    patient_size="1.8",
    requested_procedure_comments="Ü" * 41,
    scheduled_protocol_codes=(Code("P1", "99LOCAL", "Leber ä"), Code("P22", "99LOCAL", "Niere")),
)


def every_key() -> Dataset:
    """A request naming every top-level key, with zero-item sequences (all item keys)."""
    from mwl.dicom import keys as keytable
    from mwl.dicom.keys import Level

    asked = Dataset()
    for spec in keytable.keys_at(Level.TOP):
        setattr(asked, spec.keyword, [] if spec.vr == "SQ" else None)
    return asked


def some_keys() -> Dataset:
    asked = request(PatientName="", PatientID="", PregnancyStatus=None, SpecialNeeds="")
    sps = Dataset()
    sps.ScheduledProcedureStepStartDate = "20261123"
    sps.Modality = "US"
    sps.ScheduledProtocolCodeSequence = [Dataset()]
    sps.ScheduledProtocolCodeSequence[0].CodeMeaning = ""
    asked.ScheduledProcedureStepSequence = [sps]
    return asked


@pytest.mark.parametrize(
    "charset",
    # ISO_IR 13 (JIS X 0201) is written by pydicom's own encoder, the others by
    # Python's codecs.
    ["ISO_IR 192", "ISO_IR 100", "", "ISO_IR 144", "GB18030", "ISO 2022 IR 149", "ISO_IR 13"],
)
@pytest.mark.parametrize("asked", [every_key, some_keys, lambda: request(PatientID="")])
@pytest.mark.parametrize(
    "syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian], ids=["implicit", "explicit"]
)
def test_encoded_identifier_is_what_pydicom_writes_for_the_dataset(charset, asked, syntax):
    builder = ResponseBuilder(asked(), charset)
    dataset = builder.build(RICH)
    expected = write(dataset, implicit=syntax == ImplicitVRLittleEndian)
    assert builder.encode(RICH, syntax) == expected
    assert dataset == build_response(RICH, asked(), charset)
    # And it reads back: exactly the keys the Dataset holds.
    back = read(expected, implicit=syntax == ImplicitVRLittleEndian)
    assert [e.tag for e in back] == [e.tag for e in dataset]


@pytest.mark.filterwarnings("ignore:Failed to encode value")
@pytest.mark.parametrize(
    "syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian], ids=["implicit", "explicit"]
)
def test_text_no_codec_can_encode_is_written_as_pydicom_writes_it(syntax):
    # A lone surrogate (not text UTF-8 can hold): pydicom warns and writes "?".
    item = replace(RICH, patient_name="Bad\udc80^Name", requested_procedure_description="x\udc80")
    builder = ResponseBuilder(every_key(), "ISO_IR 192")
    expected = write(builder.build(item), implicit=syntax == ImplicitVRLittleEndian)
    assert builder.encode(item, syntax) == expected
    assert b"Bad?^Name" in expected


def test_builder_returns_exactly_the_requested_keys_in_each_charset():
    asked = some_keys()
    utf8 = ResponseBuilder(asked, "ISO_IR 192").build(RICH)
    latin1 = ResponseBuilder(asked, "ISO_IR 100").build(RICH)
    ascii_ = ResponseBuilder(asked, "").build(RICH)
    for response, charset in ((utf8, "ISO_IR 192"), (latin1, "ISO_IR 100")):
        assert [e.keyword for e in response] == [
            "SpecificCharacterSet",
            "PatientName",
            "PatientID",
            "PregnancyStatus",
            "SpecialNeeds",
            "ScheduledProcedureStepSequence",
        ]
        assert response.SpecificCharacterSet == charset
    assert "SpecificCharacterSet" not in ascii_
    (sps,) = utf8.ScheduledProcedureStepSequence
    assert [e.keyword for e in sps] == [
        "Modality",
        "ScheduledProcedureStepStartDate",
        "ScheduledProtocolCodeSequence",
    ]
    assert [c.CodeMeaning for c in sps.ScheduledProtocolCodeSequence] == ["Leber ä", "Niere"]
    assert utf8.PregnancyStatus == 4
    assert str(ascii_.PatientName) == "Oster^Emile"
    assert str(latin1.PatientName) == "Øster^Émile"


def test_builder_writes_only_little_endian_syntaxes():
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian

    builder = ResponseBuilder(request(PatientID=""))
    assert builder.writes(ExplicitVRLittleEndian) and builder.writes(ImplicitVRLittleEndian)
    for syntax in (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian):
        assert not builder.writes(syntax)
        with pytest.raises(ValueError):
            builder.encode(ITEM, syntax)


def test_builder_is_empty_only_without_keys_and_charset():
    assert ResponseBuilder(request(PatientComments=""), "").empty
    assert not ResponseBuilder(request(PatientComments=""), "ISO_IR 192").empty
    assert not ResponseBuilder(request(PatientID=""), "").empty
