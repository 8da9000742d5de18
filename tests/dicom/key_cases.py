"""The matching cases every external worklist client runs against the sample worklist.

One table, so DCMTK findscu, pynetdicom's findscu app and Orthanc are held to the
same cases. A key ``sps_X`` goes in the Scheduled Procedure Step Sequence item; the
expected list is the SPS IDs returned, in the broker's order (by start).
"""

from __future__ import annotations

KEY_CASES: list[tuple[dict[str, str], list[str]]] = [
    ({"sps_Modality": "CT"}, ["S1", "S5"]),
    ({"sps_ScheduledStationAETitle": "MR01"}, ["S2", "S3"]),
    ({"sps_ScheduledProcedureStepStartDate": "20261121"}, ["S1", "S2", "S5"]),
    ({"sps_ScheduledProcedureStepStartDate": "20261122-20261123"}, ["S3", "S4"]),
    ({"PatientID": "P2"}, ["S2", "S3"]),
    ({"PatientName": "Doe*"}, ["S6", "S2", "S3"]),
    ({"PatientName": "mül*"}, ["S1"]),
    ({"AccessionNumber": "ACC3"}, ["S4"]),
]

SPS_PATH = "ScheduledProcedureStepSequence[0]"


def command_line_keys(case: dict[str, str]) -> tuple[str, ...]:
    """A case as ``-k`` values of the findscu command lines (DCMTK's and pynetdicom's)."""
    return tuple(
        f"{SPS_PATH}.{key[4:]}={value}" if key.startswith("sps_") else f"{key}={value}"
        for key, value in case.items()
    )
