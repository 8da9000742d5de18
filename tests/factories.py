"""Builders of synthetic domain objects for tests: orders, patients, steps (no real data)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

from sqlalchemy.orm import Session, sessionmaker

from mwl.domain import Code, Order, PatientDemographics, RequestedProcedure, ScheduledStep
from mwl.orders.apply import apply_order

DAY = dt.datetime(2026, 12, 7, 7, 0)


def one_step_order(
    accession: str,
    start: dt.datetime | None,
    *,
    patient_id: str = "PAT1",
    patient_name: str = "Doe^Jane",
    birth_date: str = "",
    sex: str = "",
    modality: str = "CT",
    station: str = "CT01",
    description: str = "",
    protocol: tuple[Code, ...] = (),
    procedure_id: str | None = None,
    placer: str | None = None,
    sps_id: str | None = None,
    control: str = "NW",
    status: str = "SC",
) -> Order:
    """An order of one requested procedure with one step, from the sending facility HOSP.

    The requested procedure ID defaults to the accession number, the placer order
    number to ``PL-<accession>``, the step ID to ``S-<accession>``; ``description``
    describes both the procedure and the step.
    """
    step = ScheduledStep(
        sps_id if sps_id is not None else f"S-{accession}",
        modality=modality,
        scheduled_station_ae_title=station,
        start=start,
        scheduled_procedure_step_description=description,
        scheduled_protocol_codes=protocol,
    )
    procedure = RequestedProcedure(
        study_instance_uid="",
        requested_procedure_id=procedure_id if procedure_id is not None else accession,
        accession_number=accession,
        requested_procedure_description=description,
        placer_order_number=placer if placer is not None else f"PL-{accession}",
        steps=(step,),
    )
    return Order(
        order_control=control,
        order_status=status,
        patient=PatientDemographics(patient_id, "HOSP", patient_name, birth_date, sex),
        procedures=(procedure,),
        sending_facility="HOSP",
    )


def order_with_steps(
    index: int,
    steps: int,
    *,
    modality: str = "CT",
    station: str = "CT01",
    start: dt.datetime = DAY,
) -> Order:
    """A new order (NW/SC) of patient ``P<index>`` with ``steps`` steps a minute apart."""
    scheduled = tuple(
        ScheduledStep(
            f"SPS{index}-{j}",
            modality=modality,
            scheduled_station_ae_title=station,
            scheduled_station_name=f"{station}-ROOM",
            start=start + dt.timedelta(minutes=index * steps + j),
            scheduled_procedure_step_description=f"{modality} step {j}",
        )
        for j in range(steps)
    )
    return Order(
        order_control="NW",
        order_status="SC",
        patient=PatientDemographics(
            f"P{index:05d}", "HOSP", f"Synthetic{index}^Patient", "19700101", "O"
        ),
        procedures=(
            RequestedProcedure(
                study_instance_uid="",
                requested_procedure_id=f"RP{index}",
                accession_number=f"ACC{index:06d}",
                requested_procedure_description=f"{modality} examination",
                requested_procedure_code=None,
                requested_procedure_priority="ROUTINE",
                referring_physician_name="Referrer^Test",
                placer_order_number=f"PL{index}",
                steps=scheduled,
            ),
        ),
        sending_facility="HOSP",
    )


def orders(total_steps: int, steps_per_order: int = 15, **kwargs: object) -> Iterator[Order]:
    """Orders holding ``total_steps`` steps in all (the last order may hold fewer)."""
    index = 0
    left = total_steps
    while left > 0:
        count = min(steps_per_order, left)
        yield order_with_steps(index, count, **kwargs)  # type: ignore[arg-type]
        index += 1
        left -= count


def load_steps(factory: sessionmaker[Session], total_steps: int, **kwargs: object) -> None:
    """Store ``total_steps`` scheduled steps through the order service."""
    for order in orders(total_steps, **kwargs):
        with factory.begin() as session:
            apply_order(session, order)
