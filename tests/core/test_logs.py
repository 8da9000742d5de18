"""mwl.logs: the correlation context and the JSON line format, on stdlib records."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from mwl.config import load_settings
from mwl.errors import SettingsError
from mwl.logs import ContextFilter, bind, component_of, log_context, make_formatter, unbind


@pytest.fixture
def json_log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing JSON lines into a buffer, as ``mwl.cli`` installs it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(make_formatter("json"))
    handler.addFilter(ContextFilter())
    log = logging.getLogger("mwl.dicom.test_logs")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    try:
        yield log, stream
    finally:
        log.removeHandler(handler)
        log.propagate = True


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_record_is_one_line_with_the_fields(json_log):
    log, stream = json_log
    before = dt.datetime.now(dt.UTC)
    log.info("C-FIND from %s: %d matches", "CT01", 2)
    [line] = _lines(stream)
    assert line.keys() == {"timestamp", "level", "logger", "component", "message"}
    assert line["level"] == "INFO" and line["logger"] == "mwl.dicom.test_logs"
    assert line["component"] == "dicom" and line["message"] == "C-FIND from CT01: 2 matches"
    stamp = dt.datetime.fromisoformat(str(line["timestamp"]))
    assert str(line["timestamp"]).endswith("Z") and stamp.utcoffset() == dt.timedelta(0)
    assert abs((stamp - before).total_seconds()) < 5


def test_an_exception_is_one_field_of_one_line(json_log):
    log, stream = json_log
    try:
        raise ValueError("bad value")
    except ValueError:
        log.exception("handler failed")
    assert len(stream.getvalue().splitlines()) == 1
    [line] = _lines(stream)
    assert line["message"] == "handler failed" and line["level"] == "ERROR"
    assert str(line["exception"]).startswith("Traceback (most recent call last):")
    assert str(line["exception"]).endswith("ValueError: bad value")


def test_context_fields_nest_and_end_with_their_block(json_log):
    log, stream = json_log
    with log_context(association="a1", peer="127.0.0.1:104"):
        token = bind(calling_ae="CT01", called_ae="")
        log.info("inside")
        with log_context(hl7_control_id="MSG1"):
            log.info("nested")
        unbind(token)
        log.info("unbound")
    log.info("outside")
    inside, nested, unbound, outside = _lines(stream)
    assert inside["correlation_id"] == "a1"
    assert (inside["association"], inside["peer"], inside["calling_ae"]) == (
        "a1",
        "127.0.0.1:104",
        "CT01",
    )
    # Empty values are left out.
    assert "called_ae" not in inside
    # The association names the line before the message it handles.
    assert nested["correlation_id"] == "a1" and nested["hl7_control_id"] == "MSG1"
    assert "calling_ae" not in unbound and unbound["association"] == "a1"
    assert "correlation_id" not in outside and "association" not in outside


def test_threads_do_not_share_a_context(json_log):
    log, stream = json_log
    started, release = threading.Event(), threading.Event()

    def other() -> None:
        with log_context(association="other"):
            started.set()
            release.wait(5)
            log.info("other thread")

    thread = threading.Thread(target=other)
    thread.start()
    assert started.wait(5)
    with log_context(association="main"):
        log.info("main thread")
    release.set()
    thread.join(5)
    by_message = {line["message"]: line["association"] for line in _lines(stream)}
    assert by_message == {"main thread": "main", "other thread": "other"}


def test_extra_fields_are_written(json_log):
    log, stream = json_log
    log.info("query", extra={"matches": 3})
    assert _lines(stream)[0]["matches"] == 3


@pytest.mark.parametrize(
    ("name", "component"),
    [
        ("mwl.hl7.intake", "hl7"),
        ("mwl.dicom.net.association", "dicom"),
        ("pynetdicom.acse", "dicom"),
        ("web.auth", "web"),
        ("cheroot.wsgi", "web"),
        ("mwl.store.migrate", "store"),
        ("sqlalchemy.engine", "store"),
        ("mwl.cli", "cli"),
        ("mwl.operations.retention", "operations"),
        ("webhooks", "webhooks"),
    ],
)
def test_component_by_logger_name(name: str, component: str):
    assert component_of(name) == component


def test_text_stays_the_default_format():
    record = logging.makeLogRecord({"name": "mwl.cli", "levelname": "INFO", "msg": "ready"})
    assert make_formatter("text").format(record).endswith(" INFO mwl.cli: ready")


def test_log_format_setting():
    assert load_settings(None, {}).log_format == "text"
    assert load_settings(None, {"MWL_LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(SettingsError, match="log_format"):
        load_settings(None, {"MWL_LOG_FORMAT": "xml"})


STRAY = """
import threading, warnings
from mwl.cli import configure_logging
from mwl.config import load_settings

configure_logging(load_settings(None, {"MWL_LOG_FORMAT": "json"}))
warnings.warn("a library's warning", UserWarning)
def crash():
    raise RuntimeError("thread died")
thread = threading.Thread(target=crash, name="worker-1")
thread.start()
thread.join()
raise ValueError("main died")
"""


def test_warnings_and_uncaught_exceptions_are_json_lines_too(tmp_path):
    # In a process of its own: the hooks are process-wide (pytest has its own).
    ran = subprocess.run(
        [sys.executable, "-c", STRAY], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert ran.returncode == 1
    lines = [json.loads(line) for line in ran.stderr.splitlines()]
    warning, thread, main = lines
    assert (warning["level"], warning["component"]) == ("WARNING", "python")
    assert "a library's warning" in warning["message"]
    assert thread["level"] == "ERROR" and "worker-1" in thread["message"]
    assert str(thread["exception"]).endswith("RuntimeError: thread died")
    assert main["level"] == "CRITICAL"
    assert str(main["exception"]).endswith("ValueError: main died")
