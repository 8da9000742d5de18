"""Put N synthetic worklist items into a broker database: the same items the peers hold.

The items come from the shared generator (``../shared/peers/gen_worklist.py``)
called exactly as its ``generate()`` calls it (same seed, base date, spread and
random-number sequence), so with the same ``--n``/``--seed``/``--base-date`` our
database and the ``.wl`` folder that wlmscpfs and Orthanc read hold the same
items. Each generated Dataset becomes a domain :class:`mwl.domain.Order`
(order control NW, status SC: one requested procedure with one step), then:

``--method bulk`` (default)
    rows inserted in batches through the ORM models (``session.execute(insert(Model),
    rows)``), with the same derived columns ``apply_order`` writes (folded name
    key, start time, code columns). 100,000 items take a few minutes, most of it
    in the generator.
``--method apply-order``
    each Order through :func:`mwl.orders.apply.apply_order`, committed every
    ``--batch`` orders: the service path, slower, the reference for ``--self-check``.

The database is migrated first (``mwl.store.migrate.upgrade``) and must hold no steps
unless ``--recreate`` (delete the SQLite file, or DROP/CREATE the PostgreSQL
database named in the URL; ``test`` and ``postgres`` are refused).

Examples::

    python bench/load_items.py --n 10000 --database-url sqlite:////tmp/mwl-bench.db --recreate
    python bench/load_items.py --n 100000 \
        --database-url postgresql://postgres@127.0.0.1:5432/mwl_bench --recreate
    python bench/load_items.py --self-check 300   # both methods give the same rows
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import benchlib
from pydicom.dataset import Dataset
from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from mwl.domain import (
    Code,
    Order,
    PatientDemographics,
    RequestedProcedure,
    ScheduledStep,
    SpsStatus,
)
from mwl.orders.apply import apply_order
from mwl.store.engine import make_engine, make_session_factory
from mwl.store.migrate import upgrade
from mwl.store.models import Patient, ScheduledProcedureStep, format_codes, utcnow
from mwl.store.models import RequestedProcedure as RequestedProcedureRow
from mwl.worklist.names import name_search_key

DEFAULT_SEED = 20261121
DEFAULT_BASE_DATE = "20261121"
DEFAULT_SPREAD_DAYS = 30
DEFAULT_CHARSET = "ISO_IR 192"
SENDING_APPLICATION = "BENCH"
SENDING_FACILITY = "HOSP"


@dataclass(frozen=True, slots=True)
class ItemFacts:
    """The matchable values of one generated item, for ground-truth match counts."""

    modality: str
    station: str
    date: str  # YYYYMMDD
    patient_id: str
    accession_number: str
    patient_name: str  # as stored, Family^Given


# --------------------------------------------------------------------------- items


class _Attributes(SimpleNamespace):
    """Stands in for pydicom's Dataset in the light generator: attributes only."""

    def __init__(self, *_: Any) -> None:
        super().__init__()


def _light_generator(peers_dir: Path | None) -> ModuleType:
    """A second copy of ``gen_worklist`` whose items are plain attribute holders.

    ``make_item`` draws the same random numbers in the same order whatever it puts
    them in, so the values are those of the pydicom Datasets (``--self-check``
    compares them); building Datasets and file meta is 80 % of the generator's time,
    which matters at 1,000,000 items.
    """
    gen = benchlib.load_module_copy("gen_worklist_light", peers_dir, "gen_worklist.py")
    gen.Dataset = gen.FileMetaDataset = _Attributes
    gen.Sequence = list
    return gen


def iter_datasets(
    n: int,
    *,
    seed: int = DEFAULT_SEED,
    base_date: str = DEFAULT_BASE_DATE,
    spread_days: int = DEFAULT_SPREAD_DAYS,
    charset: str = DEFAULT_CHARSET,
    peers_dir: Path | None = None,
    light: bool = False,
) -> Iterator[Dataset]:
    """Yield the n Datasets ``gen_worklist.generate`` would write, in the same order.

    Mirrors ``generate()`` call for call (patients first, then per item
    ``rng.choice(patients)`` before ``make_item``) so the random sequence, and
    therefore every value, is the same as in the peers' ``.wl`` files. With
    ``light`` the items are attribute holders with the same values, not Datasets
    (for :func:`facts` and :func:`dataset_to_order` only).
    """
    gen = _light_generator(peers_dir) if light else benchlib.gen_worklist_module(peers_dir)
    rng = random.Random(seed)
    base = dt.datetime.strptime(base_date, "%Y%m%d").date()
    patients = gen.make_patients(rng, max(1, (n * 7) // 10))
    for idx in range(n):
        yield gen.make_item(rng, idx, rng.choice(patients), base, spread_days, charset)


def facts(ds: Dataset) -> ItemFacts:
    """The values the benchmark's query shapes match on."""
    sps = ds.ScheduledProcedureStepSequence[0]
    return ItemFacts(
        modality=sps.Modality,
        station=sps.ScheduledStationAETitle,
        date=sps.ScheduledProcedureStepStartDate,
        patient_id=ds.PatientID,
        accession_number=ds.AccessionNumber,
        patient_name=str(ds.PatientName),
    )


def dataset_to_order(ds: Dataset) -> Order:
    """One generated worklist item as the order (NW, SC) a RIS would have sent for it."""
    sps = ds.ScheduledProcedureStepSequence[0]
    code = ds.RequestedProcedureCodeSequence[0]
    start = dt.datetime.strptime(
        sps.ScheduledProcedureStepStartDate + sps.ScheduledProcedureStepStartTime, "%Y%m%d%H%M%S"
    )
    step = ScheduledStep(
        scheduled_procedure_step_id=sps.ScheduledProcedureStepID,
        modality=sps.Modality,
        scheduled_station_ae_title=sps.ScheduledStationAETitle,
        scheduled_station_name=sps.ScheduledStationName,
        scheduled_procedure_step_location=sps.ScheduledProcedureStepLocation,
        start=start,
        scheduled_performing_physician_name=str(sps.ScheduledPerformingPhysicianName),
        scheduled_procedure_step_description=sps.ScheduledProcedureStepDescription,
    )
    procedure = RequestedProcedure(
        study_instance_uid=ds.StudyInstanceUID,
        requested_procedure_id=ds.RequestedProcedureID,
        accession_number=ds.AccessionNumber,
        requested_procedure_description=ds.RequestedProcedureDescription,
        requested_procedure_code=Code(
            code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning
        ),
        requested_procedure_priority=ds.RequestedProcedurePriority,
        requesting_physician=str(ds.RequestingPhysician),
        referring_physician_name=str(ds.ReferringPhysicianName),
        steps=(step,),
    )
    patient = PatientDemographics(
        patient_id=ds.PatientID,
        issuer_of_patient_id=ds.IssuerOfPatientID,
        patient_name=str(ds.PatientName),
        patient_birth_date=ds.PatientBirthDate,
        patient_sex=ds.PatientSex,
    )
    return Order(
        order_control="NW",
        order_status="SC",
        patient=patient,
        procedures=(procedure,),
        sending_application=SENDING_APPLICATION,
        sending_facility=SENDING_FACILITY,
    )


# --------------------------------------------------------------------------- loading


@dataclass
class LoadResult:
    n: int
    method: str
    seconds: float
    patients: int
    steps: int


class _BulkRows:
    """Row dicts for the three tables, ids assigned here so one INSERT per batch suffices."""

    def __init__(self, session: Session) -> None:
        self.next_patient = _max_id(session, Patient) + 1
        self.next_procedure = _max_id(session, RequestedProcedureRow) + 1
        self.next_step = _max_id(session, ScheduledProcedureStep) + 1
        self.patient_keys: dict[tuple[str, str], int] = {
            (pid, issuer): key
            for key, pid, issuer in session.execute(
                select(Patient.id, Patient.patient_id, Patient.issuer_of_patient_id)
            )
        }
        self.patients: list[dict[str, Any]] = []
        self.procedures: list[dict[str, Any]] = []
        self.steps: list[dict[str, Any]] = []

    def add(self, order: Order, now: dt.datetime) -> None:
        # The same columns mwl.orders.apply.apply_order writes for a new order (NW/SC).
        demo = order.patient
        key = (demo.patient_id, demo.issuer_of_patient_id)
        patient_key = self.patient_keys.get(key)
        if patient_key is None:
            patient_key = self.patient_keys[key] = self.next_patient
            self.next_patient += 1
            self.patients.append(
                {
                    "id": patient_key,
                    "patient_id": demo.patient_id,
                    "issuer_of_patient_id": demo.issuer_of_patient_id,
                    "patient_name": demo.patient_name,
                    "patient_name_key": name_search_key(demo.patient_name),
                    "patient_birth_date": demo.patient_birth_date,
                    "patient_sex": demo.patient_sex,
                    "updated_at": now,
                }
            )
        for procedure in order.procedures:
            code = procedure.requested_procedure_code
            procedure_key = self.next_procedure
            self.next_procedure += 1
            self.procedures.append(
                {
                    "id": procedure_key,
                    "patient_key": patient_key,
                    "study_instance_uid": procedure.study_instance_uid,
                    "requested_procedure_id": procedure.requested_procedure_id,
                    "accession_number": procedure.accession_number,
                    "requested_procedure_description": procedure.requested_procedure_description,
                    "requested_procedure_code_value": code.value if code else "",
                    "requested_procedure_code_scheme": code.scheme if code else "",
                    "requested_procedure_code_meaning": code.meaning if code else "",
                    "requested_procedure_priority": procedure.requested_procedure_priority,
                    "requesting_physician": procedure.requesting_physician,
                    "referring_physician_name": procedure.referring_physician_name,
                    "placer_order_number": procedure.placer_order_number,
                    "filler_order_number": procedure.filler_order_number,
                    "sending_application": order.sending_application,
                    "sending_facility": order.sending_facility,
                    "updated_at": now,
                }
            )
            for step in procedure.steps:
                assert step.start is not None
                self.steps.append(
                    {
                        "id": self.next_step,
                        "procedure_key": procedure_key,
                        "scheduled_procedure_step_id": step.scheduled_procedure_step_id,
                        "modality": step.modality,
                        "scheduled_station_ae_title": step.scheduled_station_ae_title,
                        "scheduled_station_name": step.scheduled_station_name,
                        "scheduled_procedure_step_location": step.scheduled_procedure_step_location,
                        "start_datetime": step.start,
                        "start_time": step.start.strftime("%H%M%S"),
                        "scheduled_performing_physician_name": (
                            step.scheduled_performing_physician_name
                        ),
                        "scheduled_procedure_step_description": (
                            step.scheduled_procedure_step_description
                        ),
                        "scheduled_protocol_codes": format_codes(step.scheduled_protocol_codes),
                        "status": SpsStatus.SCHEDULED.value,
                        "updated_at": now,
                    }
                )
                self.next_step += 1

    def flush(self, session: Session) -> None:
        # Core INSERTs of many rows (one statement per batch and table; psycopg and
        # sqlite3 execute them as multi-row inserts), none of the ORM's bookkeeping.
        connection = session.connection()
        for model, rows in (
            (Patient, self.patients),
            (RequestedProcedureRow, self.procedures),
            (ScheduledProcedureStep, self.steps),
        ):
            if rows:
                connection.execute(insert(model.__table__), rows)
            rows.clear()


def _max_id(session: Session, model: Any) -> int:
    return int(session.scalar(select(func.coalesce(func.max(model.id), 0))) or 0)


def _reset_sequences(session: Session) -> None:
    """After explicit ids on PostgreSQL: move each SERIAL sequence past the highest id."""
    for table in ("patient", "requested_procedure", "scheduled_procedure_step"):
        session.execute(
            text(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT COALESCE(MAX(id), 0) + 1 FROM {table}), false)"
            )
        )


def load(
    database_url: str,
    n: int,
    *,
    method: str = "bulk",
    batch: int = 5000,
    seed: int = DEFAULT_SEED,
    base_date: str = DEFAULT_BASE_DATE,
    spread_days: int = DEFAULT_SPREAD_DAYS,
    recreate: bool = False,
    peers_dir: Path | None = None,
    progress: bool = True,
) -> tuple[LoadResult, list[ItemFacts]]:
    """Migrate ``database_url`` and store the n generated items.

    Returns
    -------
    LoadResult, list of ItemFacts
        Timing and counts, and the matchable values of every item (for the
        expected match counts of the query benchmark).

    Raises
    ------
    RuntimeError
        When the database already holds scheduled steps and ``recreate`` is false.
    """
    if recreate:
        benchlib.recreate_database(database_url)
    engine = make_engine(database_url)
    all_facts: list[ItemFacts] = []
    started = time.perf_counter()
    try:
        upgrade(engine)
        writers = make_session_factory(engine, writer=True)
        with writers() as session:
            existing = session.scalar(select(func.count()).select_from(ScheduledProcedureStep))
            rows = _BulkRows(session) if method == "bulk" else None
        if existing:
            raise RuntimeError(
                f"{make_url(database_url).render_as_string(hide_password=True)} already "
                f"holds {existing} steps; use --recreate (or another database)"
            )
        now = utcnow()
        datasets = iter_datasets(
            n,
            seed=seed,
            base_date=base_date,
            spread_days=spread_days,
            peers_dir=peers_dir,
            light=method == "bulk",
        )
        done = 0
        while done < n:
            size = min(batch, n - done)
            with writers.begin() as session:
                for _ in range(size):
                    ds = next(datasets)
                    all_facts.append(facts(ds))
                    order = dataset_to_order(ds)
                    if rows is not None:
                        rows.add(order, now)
                    else:
                        apply_order(session, order)
                if rows is not None:
                    rows.flush(session)
            done += size
            if progress:
                rate = done / max(1e-9, time.perf_counter() - started)
                print(
                    f"\r  loaded {done}/{n} items ({rate:,.0f}/s)",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
        if progress and n:
            print(file=sys.stderr)
        with writers.begin() as session:
            if benchlib.is_postgres(database_url):
                _reset_sequences(session)
            patients = session.scalar(select(func.count()).select_from(Patient)) or 0
            steps = session.scalar(select(func.count()).select_from(ScheduledProcedureStep)) or 0
        if benchlib.is_postgres(database_url):
            # Fresh statistics, as autovacuum would give a database that grew over months.
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("ANALYZE"))
        else:
            with engine.begin() as conn:
                conn.exec_driver_sql("ANALYZE")
    finally:
        engine.dispose()
    return LoadResult(n, method, time.perf_counter() - started, patients, steps), all_facts


# --------------------------------------------------------------------------- self-check


def _table_rows(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the three worklist tables without ids and timestamps, sorted."""
    engine = make_engine(database_url)
    out: dict[str, list[tuple[Any, ...]]] = {}
    try:
        with engine.connect() as conn:
            for model in (Patient, RequestedProcedureRow, ScheduledProcedureStep):
                skip = {"id", "updated_at", "patient_key", "procedure_key"}
                columns = [c for c in model.__table__.columns if c.name not in skip]
                out[model.__tablename__] = sorted(
                    tuple(str(v) for v in row) for row in conn.execute(select(*columns))
                )
    finally:
        engine.dispose()
    return out


def self_check(n: int, peers_dir: Path | None = None) -> int:
    """Load n items both ways into two SQLite files and compare the rows; 0 when equal.

    The bulk load uses the light generator and the service path pydicom's Datasets,
    so this also checks that both generators give the same items.
    """
    light = [dataset_to_order(ds) for ds in iter_datasets(n, peers_dir=peers_dir, light=True)]
    full = [dataset_to_order(ds) for ds in iter_datasets(n, peers_dir=peers_dir)]
    print(f"orders from the light generator == from pydicom Datasets: {light == full}")
    with tempfile.TemporaryDirectory(prefix="mwl-load-check-") as tmp:
        urls = {m: f"sqlite:///{tmp}/{m}.db" for m in ("bulk", "apply-order")}
        for method, url in urls.items():
            load(url, n, method=method, batch=100, peers_dir=peers_dir, progress=False)
        bulk, service = _table_rows(urls["bulk"]), _table_rows(urls["apply-order"])
    status = 0 if light == full else 1
    for table in bulk:
        same = bulk[table] == service[table]
        print(f"{table}: {len(bulk[table])} rows, bulk == apply_order: {same}")
        if not same:
            status = 1
            diff = set(bulk[table]) ^ set(service[table])
            for row in sorted(diff)[:5]:
                print(f"  differs: {row}")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, help="number of items")
    parser.add_argument("--database-url", help="sqlite:////path/file.db or postgresql://...")
    parser.add_argument("--method", choices=["bulk", "apply-order"], default="bulk")
    parser.add_argument("--batch", type=int, default=5000, help="items per transaction")
    parser.add_argument(
        "--recreate",
        action="store_true",
        help="start from an empty database (deletes the SQLite file / "
        "drops and creates the PostgreSQL database)",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--base-date", default=DEFAULT_BASE_DATE, help="YYYYMMDD")
    parser.add_argument("--spread-days", type=int, default=DEFAULT_SPREAD_DAYS)
    parser.add_argument("--peers-dir", type=Path, help="default: ../shared/peers")
    parser.add_argument(
        "--self-check",
        type=int,
        metavar="N",
        help="compare --method bulk and apply-order on N items, then exit",
    )
    args = parser.parse_args(argv)
    # SIGTERM/SIGINT: a normal exit (the engine is disposed, the transaction rolled back).
    benchlib.exit_on_signals("load_items")
    try:
        if args.self_check:
            return self_check(args.self_check, args.peers_dir)
        if args.n is None or args.database_url is None:
            parser.error("--n and --database-url are required")
        print(f"command: {benchlib.command_line()}")
        result, _ = load(
            args.database_url,
            args.n,
            method=args.method,
            batch=args.batch,
            seed=args.seed,
            base_date=args.base_date,
            spread_days=args.spread_days,
            recreate=args.recreate,
            peers_dir=args.peers_dir,
        )
    except (benchlib.PeersMissingError, RuntimeError, ValueError) as exc:
        print(f"load_items: {exc}", file=sys.stderr)
        return 1
    print(
        f"loaded {result.n} items ({result.steps} steps, {result.patients} patients) with "
        f"--method {result.method} in {result.seconds:.1f} s "
        f"({result.n / max(result.seconds, 1e-9):,.0f} items/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
