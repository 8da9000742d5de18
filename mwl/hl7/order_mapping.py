"""ORM^O01 / OMI^O23 segments to a domain :class:`~mwl.domain.Order`.

docs/hl7-mapping.md and docs/hl7-interface.md say which field becomes which attribute.
Each ORC starts a group with its OBR (and TQ1, ZDS, IPC, NTE, OBX); an ORM group
gives one requested procedure with one scheduled step, an OMI group one requested
procedure per distinct IPC-1/2/3 with one step per IPC. When a field is empty and a
later one is taken instead, the fallback is logged at DEBUG with field names only.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mwl.config import Hl7StationRule, Settings
from mwl.domain import Code, Order, RequestedProcedure, ScheduledStep
from mwl.hl7.datatypes import (
    AE,
    CS,
    LO,
    PN,
    SH,
    checked_code,
    coded,
    coded_text,
    dicom_uid,
    identifier,
    lo_text,
    namespace_id,
    ndl_name,
    parse_timestamp,
    truncated,
    xcn_name,
)
from mwl.hl7.errors import (
    REQUIRED_FIELD_MISSING,
    SEGMENT_SEQUENCE_ERROR,
    TABLE_VALUE_NOT_FOUND,
    Hl7MessageError,
)
from mwl.hl7.grammar import MessageHeader, Segment
from mwl.hl7.patient_mapping import patient_demographics
from mwl.timezones import site_zone

logger = logging.getLogger(__name__)

# ORC-7.6 / TQ1-9 priority (HL7 table 0027) -> Requested Procedure Priority (0040,1003).
PRIORITIES: Mapping[str, str] = {
    "S": "STAT",
    "A": "HIGH",
    "P": "HIGH",
    "C": "HIGH",
    "R": "ROUTINE",
    "T": "MEDIUM",
}

# OBX-3 naming the patient's weight or height: OBX-3.2 as docs/hl7-mapping.md has it, or
# the LOINC code in OBX-3.1 (29463-7 body weight, 3141-9 measured, 8302-2 height).
_WEIGHT_NAMES = frozenset({"BODY WEIGHT", "29463-7", "3141-9"})
_HEIGHT_NAMES = frozenset({"BODY HEIGHT", "8302-2"})
# OBX-6 unit -> factor to kilograms (weight) or metres (height, Patient's Size).
_WEIGHT_UNITS: Mapping[str, float] = {"KG": 1.0, "G": 0.001}
_HEIGHT_UNITS: Mapping[str, float] = {"M": 1.0, "CM": 0.01}


@dataclass(frozen=True)
class MappingOptions:
    """Site choices of the default mapping (from :class:`mwl.config.Settings`).

    Parameters
    ----------
    default_charset
        HL7 charset label for messages without MSH-18.
    protocol_code_components
        Components of OBR-4 with the Scheduled Protocol Code: ``(4, 5, 6)`` (dcm4chee's
        default ``OBR_4_4``) or ``(1, 2, 3)``.
    modality_map
        Sent modality value -> DICOM modality (``MRI`` -> ``MR``); others kept.
    station_rules
        Rules that pick the Scheduled Station AE title and name for a step without one.
    """

    default_charset: str = "8859/1"
    protocol_code_components: tuple[int, int, int] = (4, 5, 6)
    modality_map: Mapping[str, str] = field(default_factory=dict)
    station_rules: Sequence[Hl7StationRule] = ()
    station_from_orc18: bool = False
    #: The site's zone: timestamps with a UTC offset are converted to it.
    zone: dt.tzinfo | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> MappingOptions:
        """The mapping options a :class:`~mwl.config.Settings` asks for."""
        first = settings.hl7_protocol_code_component
        return cls(
            default_charset=settings.hl7_default_charset,
            protocol_code_components=(first, first + 1, first + 2),
            modality_map=dict(settings.hl7_modality_map),
            station_rules=settings.hl7_station_rules,
            station_from_orc18=settings.hl7_station_from_orc18,
            zone=site_zone(settings.timezone),
        )


# --------------------------------------------------------------------------- grouping


@dataclass
class _Group:
    """One ORC with the segments that follow it up to the next ORC."""

    orc: Segment
    obr: Segment | None = None
    tq1: Segment | None = None
    zds: Segment | None = None
    ipcs: list[Segment] = field(default_factory=list)
    # NTE right after the OBR (order notes, before any OBX) and the OBX of the order.
    notes: list[Segment] = field(default_factory=list)
    observations: list[Segment] = field(default_factory=list)


@dataclass
class _OrderSegments:
    """The segments of an order message the mapping reads: patient, visit, groups."""

    pid: Segment | None = None
    pv1: Segment | None = None
    allergies: list[Segment] = field(default_factory=list)
    groups: list[_Group] = field(default_factory=list)


def _grouped(segments: Sequence[Segment]) -> _OrderSegments:
    """The first PID and PV1, the AL1 before the first ORC, and the ORC groups."""
    found = _OrderSegments()
    for segment in segments:
        name = segment.name
        if name == "PID" and found.pid is None:
            found.pid = segment
        elif name == "PV1" and found.pv1 is None:
            found.pv1 = segment
        elif name == "AL1" and not found.groups:
            found.allergies.append(segment)
        elif name == "ORC":
            found.groups.append(_Group(orc=segment))
        elif found.groups:
            _add_to_group(found.groups, segment)
    return found


def _add_to_group(groups: list[_Group], segment: Segment) -> None:
    """File a segment after an ORC into the last group; other segments are ignored."""
    group = groups[-1]
    name = segment.name
    if name == "OBR":
        if group.obr is not None:
            # An OBR without its own ORC (allowed in ORM): it shares the ORC.
            group = _Group(orc=group.orc)
            groups.append(group)
        group.obr = segment
    elif name == "TQ1" and group.tq1 is None:
        group.tq1 = segment
    elif name == "ZDS" and group.zds is None:
        group.zds = segment
    elif name == "IPC":
        group.ipcs.append(segment)
    elif name == "OBX" and group.obr is not None:
        group.observations.append(segment)
    elif name == "NTE" and group.obr is not None and not group.observations:
        # An NTE after an OBX comments on that observation, not on the order.
        group.notes.append(segment)


# --------------------------------------------------------------------------- order


def map_order(header: MessageHeader, segments: list[Segment], options: MappingOptions) -> Order:
    """The mapping proper, on already split segments (see :func:`mwl.hl7.parse.parse_order`).

    Raises
    ------
    Hl7MessageError
        100 for a missing PID, ORC or OBR; 101/102/103 naming the field at fault.
    """
    found = _grouped(segments)
    if found.pid is None:
        raise Hl7MessageError(SEGMENT_SEQUENCE_ERROR, "PID", "the message has no PID segment")
    if not found.groups:
        raise Hl7MessageError(SEGMENT_SEQUENCE_ERROR, "ORC", "the message has no ORC segment")
    pv1 = found.pv1
    patient = patient_demographics(found.pid, pv1, found.allergies, has_visit=pv1 is not None)
    order_control, order_status = _order_control(found.groups)
    referring = truncated(xcn_name(pv1, 8), PN) if pv1 is not None else ""
    procedures: list[RequestedProcedure] = []
    warnings: list[str] = []
    for group in found.groups:
        procedures.extend(_procedures(header, group, referring, options))
        warnings.extend(_timing_disagreements(group, options.zone))
    return Order(
        order_control=order_control,
        order_status=order_status,
        patient=patient,
        procedures=tuple(procedures),
        sending_application=namespace_id(header.sending_application, header),
        sending_facility=namespace_id(header.sending_facility, header),
        # Where the sender should have put a start it left out: TQ1-7 in the v2.5
        # style (a TQ1 segment), else ORC-7.4 (TQ in ORC, v2.3.1).
        start_location=(
            "TQ1-7"
            if any(g.tq1 is not None for g in found.groups) or header.version_id in {"2.5", "2.5.1"}
            else "ORC-7.4"
        ),
        warnings=tuple(warnings),
    )


def _order_control(groups: Sequence[_Group]) -> tuple[str, str]:
    """ORC-1 and ORC-5 (upper case), the same in every ORC of the message."""
    order_control = groups[0].orc.get(1).upper()
    order_status = groups[0].orc.get(5).upper()
    if not order_control:
        raise Hl7MessageError(REQUIRED_FIELD_MISSING, "ORC-1", "order control is empty")
    for group in groups[1:]:
        if (group.orc.get(1).upper(), group.orc.get(5).upper()) != (order_control, order_status):
            # One message, one status change: a mix would half-apply on error.
            raise Hl7MessageError(
                TABLE_VALUE_NOT_FOUND,
                "ORC-1",
                "all ORC segments of one message must have the same ORC-1 and ORC-5",
            )
    return order_control, order_status


# --------------------------------------------------------------------------- procedures


@dataclass(frozen=True)
class _Shared:
    """What every requested procedure and step of one ORC/OBR group has in common."""

    procedure: Mapping[str, Any]  # RequestedProcedure fields other than IDs and steps
    description: str  # Requested Procedure Description
    code_value: str  # Requested Procedure Code value, for the station rules
    protocol: Code | None  # OBR-4 protocol components
    start: dt.datetime | None
    performing: str  # Scheduled Performing Physician's Name
    station_from_orc18: str  # "" unless the site takes ORC-18 as the station


def _procedures(
    header: MessageHeader, group: _Group, referring: str, options: MappingOptions
) -> list[RequestedProcedure]:
    """One group's requested procedures: per distinct IPC-1/2/3 (OMI), else one (ORM)."""
    if group.obr is None:
        raise Hl7MessageError(SEGMENT_SEQUENCE_ERROR, "OBR", "an ORC has no OBR segment")
    shared = _shared(header, group, group.obr, referring, options)
    if group.ipcs:
        return _imaging_procedures(group.ipcs, shared, options)
    return [_observation_procedure(group, group.obr, shared, options)]


def _shared(
    header: MessageHeader, group: _Group, obr: Segment, referring: str, options: MappingOptions
) -> _Shared:
    """The group's order numbers, procedure code, start, physicians and details."""
    orc = group.orc
    placer = identifier(
        _first([(orc.get(2), "ORC-2"), (obr.get(2), "OBR-2")], "placer order number"), LO, "ORC-2"
    )
    filler = identifier(
        _first([(orc.get(3), "ORC-3"), (obr.get(3), "OBR-3")], "filler order number"), LO, "ORC-3"
    )
    universal = checked_code(coded(obr, 4), "OBR-4")
    requested_code = checked_code(coded(obr, 44), "OBR-44")
    if requested_code is None and universal is not None:
        logger.debug("fallback: Requested Procedure Code from OBR-4 (OBR-44 empty)")
        requested_code = universal
    description = truncated(requested_code.meaning, LO) if requested_code else ""
    protocol = checked_code(coded(obr, 4, options.protocol_code_components), "OBR-4")
    start = _start(group, options.zone)
    performing = truncated(ndl_name(obr, 34), PN)
    procedure = dict(
        requested_procedure_description=description,
        requested_procedure_code=requested_code,
        requested_procedure_priority=_priority(group),
        requesting_physician=truncated(xcn_name(obr, 16), PN),
        referring_physician_name=referring,
        placer_order_number=placer,
        filler_order_number=filler,
        **_details(header, group, obr),
    )
    orc18 = identifier(orc.get(18), AE, "ORC-18") if options.station_from_orc18 else ""
    if orc18:
        logger.debug("fallback: Scheduled Station AE Title from ORC-18 where IPC-9 is empty")
    return _Shared(
        procedure=procedure,
        description=description,
        code_value=requested_code.value if requested_code else "",
        protocol=protocol,
        start=start,
        performing=performing,
        station_from_orc18=orc18,
    )


def _imaging_procedures(
    ipcs: Sequence[Segment], shared: _Shared, options: MappingOptions
) -> list[RequestedProcedure]:
    """OMI^O23: one SPS per IPC; IPC-1/2/3 say which requested procedure it is in."""
    by_procedure: dict[tuple[str, str, str], list[ScheduledStep]] = {}
    for ipc in ipcs:
        key = (
            identifier(ipc.get(1), SH, "IPC-1"),
            identifier(ipc.get(2), SH, "IPC-2"),
            dicom_uid(ipc.get(3), "IPC-3"),
        )
        step = _imaging_step(ipc, shared, options)
        by_procedure.setdefault(key, []).append(_route(step, shared.code_value, options))
    return [
        RequestedProcedure(
            study_instance_uid=uid,
            requested_procedure_id=rp_id,
            accession_number=accession,
            steps=tuple(steps),
            **shared.procedure,
        )
        for (accession, rp_id, uid), steps in by_procedure.items()
    ]


def _imaging_step(ipc: Segment, shared: _Shared, options: MappingOptions) -> ScheduledStep:
    """The step of one IPC segment (before the station rules)."""
    codes = _protocol_codes(ipc)
    return ScheduledStep(
        scheduled_procedure_step_id=identifier(ipc.get(4), SH, "IPC-4"),
        modality=_modality(ipc.get(5), options, "IPC-5"),
        scheduled_station_name=identifier(ipc.get(7), SH, "IPC-7"),
        scheduled_procedure_step_location=identifier(ipc.get(8), SH, "IPC-8"),
        scheduled_station_ae_title=identifier(ipc.get(9), AE, "IPC-9") or shared.station_from_orc18,
        start=shared.start,
        scheduled_performing_physician_name=shared.performing,
        scheduled_procedure_step_description=codes[0].meaning if codes else shared.description,
        scheduled_protocol_codes=codes,
    )


def _protocol_codes(ipc: Segment) -> tuple[Code, ...]:
    """IPC-6 (CE, repeating): the Scheduled Protocol Code Sequence."""
    codes: list[Code] = []
    for repetition in range(len(ipc.repetitions(6))):
        components = ipc.components(6, repetition)
        if not components or not components[0]:
            continue
        value, meaning, scheme = (components + ["", ""])[:3]
        code = checked_code(Code(value=value, meaning=meaning, scheme=scheme), "IPC-6")
        if code is not None:
            codes.append(code)
    return tuple(codes)


def _observation_procedure(
    group: _Group, obr: Segment, shared: _Shared, options: MappingOptions
) -> RequestedProcedure:
    """ORM^O01: the requested procedure and step of one OBR (Study Instance UID in ZDS-1)."""
    study_uid = dicom_uid(group.zds.get(1) if group.zds is not None else "", "ZDS-1")
    protocol = shared.protocol
    if protocol is None:
        logger.debug("fallback: SPS Description from the requested procedure (no OBR-4 protocol)")
    step = ScheduledStep(
        scheduled_procedure_step_id=identifier(obr.get(20), SH, "OBR-20"),
        modality=_modality(obr.get(24), options, "OBR-24"),
        scheduled_station_ae_title=shared.station_from_orc18,
        start=shared.start,
        scheduled_performing_physician_name=shared.performing,
        # Description = protocol code meaning (dcm4chee); without a protocol code the
        # procedure's description is what the technologist needs to see.
        scheduled_procedure_step_description=protocol.meaning if protocol else shared.description,
        scheduled_protocol_codes=(protocol,) if protocol else (),
    )
    return RequestedProcedure(
        study_instance_uid=study_uid,
        requested_procedure_id=identifier(obr.get(19), SH, "OBR-19"),
        accession_number=identifier(obr.get(18), SH, "OBR-18"),
        steps=(_route(step, shared.code_value, options),),
        **shared.procedure,
    )


# --------------------------------------------------------------------------- fields


def _picked(candidates: Sequence[tuple[str, str]], target: str) -> tuple[str, str]:
    """The first non-empty value and its field; taking a later field is logged (names only)."""
    for index, (value, location) in enumerate(candidates):
        if value:
            if index:
                logger.debug("fallback: %s from %s (%s empty)", target, location, candidates[0][1])
            return value, location
    return "", ""


def _first(candidates: Sequence[tuple[str, str]], target: str) -> str:
    """The first non-empty value (see :func:`_picked`)."""
    return _picked(candidates, target)[0]


def _start_candidates(group: _Group) -> list[tuple[str, str]]:
    """The start fields in precedence order: TQ1-7, ORC-7.4, OBR-27.4."""
    candidates: list[tuple[str, str]] = []
    if group.tq1 is not None:
        candidates.append((group.tq1.get(7, 1), "TQ1-7"))
    candidates.append((group.orc.get(7, 4), "ORC-7.4"))
    if group.obr is not None:
        candidates.append((group.obr.get(27, 4), "OBR-27.4"))
    return candidates


def _start(group: _Group, zone: dt.tzinfo | None = None) -> dt.datetime | None:
    """TQ1-7, else ORC-7.4, else OBR-27.4 (first non-empty; docs/hl7-mapping.md 2.2)."""
    value, location = _picked(_start_candidates(group), "step start")
    return parse_timestamp(value, location, zone) if value else None


def _timing_disagreements(group: _Group, zone: dt.tzinfo | None) -> list[str]:
    """A warning for each start field that names another time than the one used.

    HL7 defines OBR-27 as a copy of ORC-7, and TQ1 replaces both in v2.5; a sender
    whose fields disagree has a bug worth seeing in the message log. Compared as
    instants (offsets applied); a field that is not a valid time is left to the
    mapping, which refuses it only when it is the one used.
    """
    given = [(v, loc) for v, loc in _start_candidates(group) if v]
    if len(given) < 2:
        return []
    used_value, used_at = given[0]
    used = parse_timestamp(used_value, used_at, zone or dt.UTC)
    warnings = []
    for value, location in given[1:]:
        try:
            other = parse_timestamp(value, location, zone or dt.UTC)
        except Hl7MessageError:
            continue
        if other != used:
            warnings.append(
                f"timing: {used_at} {used_value} and {location} {value} disagree;"
                f" {used_at} was used"
            )
    return warnings


def _priority(group: _Group) -> str:
    """TQ1-9, else ORC-7.6, else OBR-27.6 (HL7 table 0027) as a DICOM priority."""
    values = []
    if group.tq1 is not None:
        values.append(group.tq1.get(9, 1))
    values.append(group.orc.get(7, 6))
    if group.obr is not None:
        values.append(group.obr.get(27, 6))
    for value in values:
        if value:
            return PRIORITIES.get(value.upper(), "")
    return ""


def _modality(value: str, options: MappingOptions, location: str) -> str:
    """The sent modality, mapped by ``hl7_modality_map``; a CS of 16 characters at most."""
    mapped = options.modality_map.get(value.upper(), value.upper())
    if mapped != value.upper():
        logger.debug("modality %s mapped to %s", value, mapped)
    return identifier(mapped, CS, location)


def _route(step: ScheduledStep, procedure_code: str, options: MappingOptions) -> ScheduledStep:
    """Fill station AE title/name from the first matching rule when the order has none."""
    if step.scheduled_station_ae_title or not options.station_rules:
        return step
    for rule in options.station_rules:
        if rule.matches(step.modality, procedure_code, step.scheduled_procedure_step_location):
            logger.debug("step routed to station %s by rule", rule.station_ae_title)
            return ScheduledStep(
                **{
                    **step.__dict__,
                    "scheduled_station_ae_title": rule.station_ae_title,
                    "scheduled_station_name": step.scheduled_station_name or rule.station_name,
                }
            )
    return step


def _details(header: MessageHeader, group: _Group, obr: Segment) -> dict[str, str]:
    """The order details of docs/hl7-mapping.md, as RequestedProcedure fields."""
    orc = group.orc
    reasons = [coded_text(obr, 31, r) for r in range(len(obr.repetitions(31)))]
    return dict(
        institution_name=lo_text(
            _first(
                [
                    (coded_text(orc, 17), "ORC-17"),
                    (namespace_id(header.sending_facility, header), "MSH-4"),
                ],
                "Institution Name",
            )
        ),
        institutional_department_name=lo_text(orc.get(13, 9)),
        reason_for_the_requested_procedure=lo_text("; ".join(r for r in reasons if r)),
        requested_procedure_comments=_comments(group.notes),
        confidentiality_code=lo_text(coded_text(orc, 28)),
        patient_transport_arrangements=lo_text(obr.get(30)),
        patient_state=lo_text(coded_text(obr, 12)),
        # OBR-13 is ST: components (an unescaped ^) are words of one text.
        medical_alerts=lo_text(" ".join(c for c in obr.components(13) if c)),
        patient_weight=_measurement(group.observations, _WEIGHT_NAMES, _WEIGHT_UNITS, "weight"),
        patient_size=_measurement(group.observations, _HEIGHT_NAMES, _HEIGHT_UNITS, "height"),
    )


def _comments(notes: Sequence[Segment]) -> str:
    """Requested Procedure Comments (LT): NTE-3 of the order's NTE segments, line by line."""
    lines = [note.get(3, repetition=r) for note in notes for r in range(len(note.repetitions(3)))]
    # LT allows CR LF and 10240 characters (PS3.5 6.2).
    return "\r\n".join(line for line in lines if line)[:10240]


def _measurement(
    observations: Sequence[Segment], names: frozenset[str], units: Mapping[str, float], what: str
) -> str:
    """Patient's Weight or Size (DS) from the first OBX that names it with a known unit."""
    for obx in observations:
        if obx.get(3, 2).upper() not in names and obx.get(3, 1).upper() not in names:
            continue
        factor = units.get(obx.get(6, 1).upper())
        if factor is None:
            logger.debug("OBX-6 unit of the %s is not one of %s; not used", what, sorted(units))
            continue
        try:
            number = float(obx.get(5, 1)) * factor
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or number <= 0:
            # Lenient on input: a wrong measurement loses a Type 2 value, not the order.
            logger.info("OBX-5 of the %s is not a positive number; left empty", what)
            continue
        if factor != 1.0:
            logger.debug("%s converted from OBX-6 %s", what, obx.get(6, 1))
        # DS holds 16 characters; six significant digits are more than scales give.
        return f"{number:.6g}"
    return ""
