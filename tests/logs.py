"""The log lines of a test broker (:class:`tests.serve.Broker`), in either log format.

``mwl serve`` prints its status lines ("... listening on ...", "mwl is ready") on
standard output and logs on standard error; the test broker reads both as one
stream. :func:`records` splits that stream into log records and fails on a line that
is neither a status line nor part of a record.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

STATUS_LINES = re.compile(
    r"^(HL7 MLLP (over TLS )?listening on |DICOM worklist SCP \S+ (over TLS )?listening on "
    r"|web page on |RIS status messages to |database |no web user yet: |all settings: "
    r"|mwl is ready$|mwl stopped$)"
)
_TEXT_RECORD = re.compile(r"^\S+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+): ")
LEVELS_ABOVE_DEBUG = frozenset({"INFO", "WARNING", "ERROR", "CRITICAL"})


@dataclass
class Record:
    """One log record: its level, the lines it was written as, and its JSON fields."""

    level: str
    lines: list[str]
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """Everything the record says: its lines and, for JSON, its decoded values."""
        decoded = "\n".join(str(value) for value in self.fields.values())
        return "\n".join(self.lines) + "\n" + decoded


def records(output: list[str], log_format: str) -> list[Record]:
    """The log records in ``output``; fails on a line that belongs to none."""
    found: list[Record] = []
    for line in output:
        if STATUS_LINES.match(line):
            continue
        if log_format == "json":
            try:
                fields = json.loads(line)
            except ValueError:
                raise AssertionError(f"log line is not JSON: {line!r}") from None
            assert isinstance(fields, dict), line
            found.append(Record(str(fields.get("level")), [line], fields))
            continue
        start = _TEXT_RECORD.match(line)
        if start:
            found.append(Record(start[1], [line]))
        elif found:
            # A traceback's lines follow their record.
            found[-1].lines.append(line)
        else:
            raise AssertionError(f"output line before any log record: {line!r}")
    return found
