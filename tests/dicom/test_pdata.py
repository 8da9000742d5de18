"""P-DATA-TF framing of responses: fragments, PDU sizes, the bytes pynetdicom reads back."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import ModalityWorklistInformationFind

from mwl.dicom.net.framing import PduReader, pdata_pdus
from tests.dicom.conftest import CLIENT_TIMEOUT, mwl_identifier

COMMAND = bytes(range(80))
IDENTIFIER = bytes(range(256)) * 3


def split_pdus(stream: bytes) -> list[P_DATA]:
    """The PDUs of a byte stream, decoded by pynetdicom (so its reading is the judge)."""
    reader = PduReader(max_pdata_length=1 << 30)
    reader.feed(stream)
    pdus = []
    while (pdu := reader.next_pdu()) is not None:
        decoded = P_DATA_TF()
        decoded.decode(pdu.data)
        pdus.append(decoded.to_primitive())
    assert reader.buffered == 0
    return pdus


def reassemble(pdus: list[P_DATA]) -> tuple[bytes, bytes, list[int]]:
    """Command and data set bytes from P-DATA-TF PDUs, and each PDV's control header."""
    command, data, headers = b"", b"", []
    for pdu in pdus:
        for context_id, pdv in pdu.presentation_data_value_list:
            assert context_id == 3
            headers.append(pdv[0])
            if pdv[0] & 0x01:
                command += pdv[1:]
            else:
                data += pdv[1:]
    return command, data, headers


# 860: command and identifier PDVs exactly fill one PDU; 859: one byte short.
@pytest.mark.parametrize("max_length", [0, 16384, 900, 860, 859, 200, 50])
def test_pdus_respect_the_peers_maximum_length_and_keep_the_bytes(max_length):
    pdus = split_pdus(pdata_pdus(3, COMMAND, IDENTIFIER, max_length))
    command, data, headers = reassemble(pdus)
    assert (command, data) == (COMMAND, IDENTIFIER)
    # Command fragments first, each fragment kind ending with its "last" bit (PS3.8 E.2).
    kinds = [h & 0x01 for h in headers]
    assert kinds == sorted(kinds, reverse=True)
    assert [h for h in headers if h & 0x02] == [0x03, 0x02]
    assert headers[-1] == 0x02
    for pdu in pdus:
        # The PDV list (items of length + context ID + PDV) fits the peer's maximum.
        size = sum(4 + 1 + len(pdv) for _, pdv in pdu.presentation_data_value_list)
        assert max_length == 0 or size <= max_length
    if max_length in (0, 16384, 900, 860):
        assert len(pdus) == 1  # command and identifier in one PDU
    else:
        assert len(pdus) > 1


def test_an_empty_data_set_still_gets_its_last_fragment():
    for max_length in (0, 50):
        command, data, headers = reassemble(split_pdus(pdata_pdus(3, COMMAND, b"", max_length)))
        assert (command, data) == (COMMAND, b"")
        assert headers[-1] == 0x02


def find_all(address: tuple[str, int], syntax: str, max_pdu: int) -> list[Dataset]:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(ModalityWorklistInformationFind, [syntax])
    ae.maximum_pdu_size = max_pdu
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = CLIENT_TIMEOUT
    assoc = ae.associate(address[0], address[1], ae_title="MWLTEST")
    assert assoc.is_established
    found, final = [], None
    try:
        for status, identifier in assoc.send_c_find(
            mwl_identifier(), ModalityWorklistInformationFind
        ):
            assert status, "no response"
            if status.Status == 0xFF00:
                found.append(identifier)
            else:
                final = status.Status
    finally:
        assoc.release()
    assert final == 0x0000
    return found


def test_every_transfer_syntax_and_pdu_size_gets_the_same_answers(scp):
    # Deflated responses are built as Datasets and encoded by pydicom: the reference.
    reference = find_all(scp.address, DeflatedExplicitVRLittleEndian, 16382)
    assert len(reference) == 6
    assert {str(r.PatientName) for r in reference} >= {"Müller^Hans", "Øster^Émile"}
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        # 64 bytes: the command set and every Identifier arrive in several fragments.
        for max_pdu in (16382, 0, 64):
            assert find_all(scp.address, syntax, max_pdu) == reference, (syntax, max_pdu)
