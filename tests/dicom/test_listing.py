"""The item page's DICOM listing: every attribute a modality receives, as a real C-FIND gets it."""

from __future__ import annotations

import codecs
import datetime as dt

from pydicom.charset import python_encoding

from mwl.config import Settings
from mwl.dicom.listing import ITEM_TAG, dataset_rows, item_attributes, universal_identifier
from mwl.dicom.response import _codec
from mwl.domain import Code, KeyMatch, MatchKind, SpsStatus, WorklistItem, WorklistQuery
from mwl.orders.values import CHARSET_CODECS
from mwl.store.engine import make_session_factory
from mwl.worklist.matching import find_items

ITEM = WorklistItem(
    patient_name="Łukasz^Żółw",
    patient_id="P3",
    issuer_of_patient_id="HOSP",
    patient_birth_date="19900303",
    patient_sex="M",
    study_instance_uid="2.25.1",
    requested_procedure_id="RP3",
    accession_number="EM2611210001",
    requested_procedure_description="US of the abdomen",
    requested_procedure_code=Code("RPC3", "99LOCAL", "US Abdomen"),
    requested_procedure_priority="STAT",
    requesting_physician="",
    referring_physician_name="",
    placer_order_number="",
    filler_order_number="",
    scheduled_procedure_step_id="EM2611210001",
    modality="US",
    scheduled_station_ae_title="US01",
    scheduled_station_name="US-1",
    scheduled_procedure_step_location="",
    start=dt.datetime(2026, 11, 23, 10, 5, 30),
    scheduled_performing_physician_name="",
    scheduled_procedure_step_description="US abdomen",
    scheduled_protocol_codes=(Code("P1", "99LOCAL", "Liver"), Code("P2", "99LOCAL", "Kidney")),
    scheduled_procedure_step_status=SpsStatus.SCHEDULED,
    allergies="Iodine\\Latex",
)


def test_every_return_key_is_listed_with_its_dictionary_name_and_value():
    rows = item_attributes(ITEM, Settings())
    by_keyword = {(r.depth, r.keyword): r for r in rows}
    top = {r.keyword for r in rows if r.depth == 0}
    assert top == {e.keyword for e in universal_identifier()} | {"SpecificCharacterSet"}
    name = by_keyword[(0, "PatientName")]
    assert (name.tag, name.name, name.vr, name.value) == (
        "(0010,0010)",
        "Patient's Name",
        "PN",
        "Łukasz^Żółw",
    )
    assert by_keyword[(0, "SpecificCharacterSet")].value == "ISO_IR 192"
    assert by_keyword[(0, "Allergies")].value == "Iodine\\Latex"
    assert by_keyword[(0, "PregnancyStatus")].value == ""  # Type 2, unknown
    assert by_keyword[(0, "ScheduledProcedureStepSequence")].value == "1 item(s)"
    assert by_keyword[(1, "ScheduledProcedureStepStartTime")].value == "100530"
    assert by_keyword[(1, "ScheduledProcedureStepStatus")].value == "SCHEDULED"
    # The SPS item holds the protocol codes, each an item of its own one level deeper.
    protocol = [r for r in rows if r.depth == 2]
    assert [(r.tag, r.name) for r in protocol if r.tag == ITEM_TAG] == [
        (ITEM_TAG, "Item 1"),
        (ITEM_TAG, "Item 2"),
    ]
    assert [r.value for r in protocol if r.keyword == "CodeMeaning"] == ["Liver", "Kidney"]


def test_the_listing_uses_the_response_character_set():
    rows = item_attributes(ITEM, Settings(dicom_response_charset="ISO_IR 100"))
    by_keyword = {r.keyword: r.value for r in rows if r.depth == 0}
    assert by_keyword["SpecificCharacterSet"] == "ISO_IR 100"
    assert by_keyword["PatientName"] == "Lukasz^Zólw"  # Ł, Ż folded; ó is Latin-1


def test_the_listing_is_what_a_modality_gets(scp, find, module_engine):
    with make_session_factory(module_engine)() as session:
        query = WorklistQuery(keys=(KeyMatch("patient_id", MatchKind.SINGLE, ("P1",)),))
        [item] = find_items(session, query)
    identifier = universal_identifier()
    identifier.SpecificCharacterSet = "ISO_IR 192"
    identifier.PatientID = "P1"
    result = find(scp.address, identifier)
    [received] = result.identifiers
    listed = [(r.depth, r.tag, r.vr, r.value) for r in item_attributes(item, Settings())]
    on_the_wire = [(r.depth, r.tag, r.vr, r.value) for r in dataset_rows(received)]
    assert listed == on_the_wire
    assert ("(0010,0010)", "Müller^Hans") in [(r[1], r[3]) for r in listed]


def test_the_core_charset_table_agrees_with_the_response_builder():
    # The core may not import pydicom, so it keeps its own table of the sets the
    # responses can be written in; it must name the codecs the builder uses.
    writable = {k for k in python_encoding if not k.startswith("ISO 2022")} | {""}
    assert set(CHARSET_CODECS) == writable
    for charset, codec in CHARSET_CODECS.items():
        assert codecs.lookup(codec).name == codecs.lookup(_codec(charset)).name, charset
