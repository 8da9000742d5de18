#!/usr/bin/env python3
"""Take the screenshots of README.md and the docs from a seeded broker, with Debian's Chromium.

Usage (from the repository root, with the project's virtual environment)::

    .venv/bin/python tools/screenshots.py            # writes docs/img/*.png
    .venv/bin/python tools/screenshots.py --out /tmp/shots --only users

The broker is the real web page as ``mwl serve`` builds it (``mwl.cli.web_app``) on
a fresh SQLite database in a temporary directory, migrated to the newest schema and
seeded with synthetic orders (no real patient data) for today; it listens on a free
loopback port and stops when the pictures are taken. Playwright drives
``/usr/bin/chromium`` (never a downloaded browser) at 1366×768, the viewport the
pages are designed for. Run it again after changing a page: the pictures then match.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mwl.admin.overrides import LiveSettings  # noqa: E402
from mwl.admin.users import add_user  # noqa: E402
from mwl.cli import web_app  # noqa: E402
from mwl.config import Settings  # noqa: E402
from mwl.domain import Code, Order, PatientDemographics, RequestedProcedure, ScheduledStep  # noqa: E402
from mwl.orders.apply import apply_order  # noqa: E402
from mwl.store.engine import make_engine, make_session_factory  # noqa: E402
from mwl.store.migrate import upgrade  # noqa: E402
from web.server import WebServer  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
OUT = ROOT / "docs" / "img"
VIEWPORT = {"width": 1366, "height": 768}
PASSWORD = "screenshot passphrase, synthetic"


@dataclass(frozen=True)
class Booking:
    """One synthetic order of the seeded day."""

    accession: str
    time: tuple[int, int]
    patient_id: str
    name: str
    birth: str
    sex: str
    modality: str
    station: str
    description: str
    control: str = "NW"
    status: str = "SC"
    protocol: tuple[Code, ...] = ()


DAY_PLAN = (
    Booking(
        "ACC0001",
        (7, 30),
        "SYN-0001",
        "Sample^Anna",
        "19640312",
        "F",
        "CT",
        "CT01",
        "CT thorax with contrast",
        protocol=(Code("CTTHX", "99SYN", "Thorax contrast"),),
    ),
    Booking(
        "ACC0002",
        (7, 45),
        "SYN-0002",
        "Example^Bert^J",
        "19811105",
        "M",
        "MR",
        "MR_ROOM_2",
        "MR knee left",
    ),
    Booking(
        "ACC0003",
        (8, 15),
        "SYN-0003",
        "Test^Carla",
        "19920730",
        "F",
        "CT",
        "CT01",
        "CT head without contrast",
    ),
    Booking(
        "ACC0004",
        (8, 40),
        "SYN-0004",
        "Demo^Dieter",
        "19550101",
        "M",
        "MR",
        "MR_ROOM_2",
        "MR lumbar spine",
        control="XO",
        status="IP",
    ),
    Booking(
        "ACC0005", (9, 0), "SYN-0005", "Muster^Erika", "19770618", "F", "US", "US01", "US abdomen"
    ),
    Booking(
        "ACC0006",
        (9, 30),
        "SYN-0006",
        "Beispiel^Franz",
        "20240102",
        "M",
        "CR",
        "CR01",
        "Chest X-ray two views",
    ),
    Booking(
        "ACC0007",
        (10, 15),
        "SYN-0007",
        "Probe^Greta",
        "19880909",
        "F",
        "CT",
        "CT01",
        "CT abdomen and pelvis",
    ),
)


def _order(day: dt.date, booking: Booking, *, control: str, status: str) -> Order:
    hour, minute = booking.time
    step = ScheduledStep(
        f"S-{booking.accession}",
        modality=booking.modality,
        scheduled_station_ae_title=booking.station,
        start=dt.datetime.combine(day, dt.time(hour, minute)),
        scheduled_procedure_step_description=booking.description,
        scheduled_protocol_codes=booking.protocol,
    )
    procedure = RequestedProcedure(
        study_instance_uid="",
        requested_procedure_id=booking.accession,
        accession_number=booking.accession,
        requested_procedure_description=booking.description,
        placer_order_number=f"PL-{booking.accession}",
        steps=(step,),
    )
    patient = PatientDemographics(
        booking.patient_id, "HOSP", booking.name, booking.birth, booking.sex
    )
    return Order(
        order_control=control, order_status=status, patient=patient, procedures=(procedure,)
    )


def seed(settings: Settings, day: dt.date) -> None:
    """Migrate the database and store the day's synthetic orders and the accounts."""
    engine = make_engine(settings.database_url)
    try:
        upgrade(engine)
        writers = make_session_factory(engine, writer=True)
        with writers.begin() as session:
            for booking in DAY_PLAN:
                apply_order(session, _order(day, booking, control="NW", status="SC"))
                if booking.control != "NW":
                    apply_order(
                        session,
                        _order(day, booking, control=booking.control, status=booking.status),
                    )
            # One cancelled order: the list shows it struck through.
            apply_order(session, _order(day, DAY_PLAN[2], control="CA", status="CA"))
            add_user(session, "admin", PASSWORD, "admin")
            add_user(session, "radiographer", PASSWORD + " 2", "editor")
            add_user(session, "reception", PASSWORD + " 3", "viewer")
    finally:
        engine.dispose()


@contextmanager
def broker(settings: Settings) -> Iterator[str]:
    """The web page as ``mwl serve`` runs it, on a free loopback port; yields its base URL."""
    engine = make_engine(settings.database_url)
    readers = make_session_factory(engine)
    writers = make_session_factory(engine, writer=True)
    app = web_app(settings, readers, writers, LiveSettings(settings, readers))
    server = WebServer(app, "127.0.0.1", 0, threads=2)
    server.start()
    try:
        yield f"http://127.0.0.1:{server.address[1]}"
    finally:
        server.shutdown()
        engine.dispose()


def _log_in(page: Any, base: str) -> None:
    page.goto(f"{base}/login")
    page.locator("input[name=username]").fill("admin")
    page.locator("input[name=password]").fill(PASSWORD)
    page.locator("form.login button[type=submit]").click()
    page.wait_for_selector("form.logout")


def _daylist(page: Any, base: str) -> None:
    page.goto(f"{base}/")


def _item(page: Any, base: str) -> None:
    page.goto(f"{base}/")
    page.locator("main table a[href^='/items/']").first.click()
    page.wait_for_selector("main h1")


def _users(page: Any, base: str) -> None:
    page.goto(f"{base}/admin/users")


# name -> (browser locale, how to get there, whole page or the viewport)
SHOTS: dict[str, tuple[str, Callable[[Any, str], None], bool]] = {
    "daylist": ("en-GB", _daylist, False),
    "daylist-de": ("de-CH", _daylist, False),
    "item": ("en-GB", _item, False),
    "users": ("en-GB", _users, False),
}


def take(base: str, out: Path, only: list[str]) -> list[Path]:
    """Log in and save each screenshot named in ``only`` (all when empty) under ``out``."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    written = []
    with sync_playwright() as playwright:
        for name, (locale, visit, full_page) in SHOTS.items():
            if only and name not in only:
                continue
            # --lang asks for the browser's own language too; headless Chromium still
            # draws the date input in its default form (the page's text is the locale's).
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM),
                args=["--headless", "--no-sandbox", "--disable-gpu", f"--lang={locale}"],
            )
            try:
                page = browser.new_context(locale=locale, viewport=VIEWPORT).new_page()
                _log_in(page, base)
                visit(page, base)
                path = out / f"{name}.png"
                page.screenshot(path=str(path), full_page=full_page)
                written.append(path)
            finally:
                browser.close()
    return written


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="where the .png files go")
    parser.add_argument("--only", action="append", default=[], choices=sorted(SHOTS))
    args = parser.parse_args(argv)
    if not CHROMIUM.exists():
        print(f"{CHROMIUM} is missing: apt-get install chromium", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="mwl-screenshots-") as tmp:
        settings = Settings(
            database_url=f"sqlite:///{Path(tmp) / 'mwl.db'}",
            bind_address="127.0.0.1",
            web_port=0,
            web_secret_key="screenshots",
        )
        seed(settings, dt.date.today())
        with broker(settings) as base:
            for path in take(base, args.out, args.only):
                print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
