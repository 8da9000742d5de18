"""Every program outside Python the tests talk to, by absolute path.

By path, not through ``PATH``: an activated virtual environment puts pynetdicom's own
``findscu``, ``echoscu`` and ``storescu`` first on ``PATH``, and a test meant to hold
the SCP to DCMTK would then quietly talk to pynetdicom. The paths are Debian's
(``apt-get install dcmtk orthanc chromium nmap openssl nodejs slapd ldap-utils``; ``.ci/run``
installs them). A test that needs one carries its ``required`` marker and skips,
naming the missing file and its package, where it is not installed.

pynetdicom's own applications are run as ``python -m pynetdicom findscu``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Peer:
    """One external program: where it is and which Debian package installs it."""

    path: Path
    package: str

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def missing(self) -> str | None:
        """Why the program cannot be run, or None when it can."""
        if os.access(self.path, os.X_OK):
            return None
        return f"{self.path} is not installed (apt-get install {self.package})"

    @property
    def required(self) -> pytest.MarkDecorator:
        """A marker that skips the test, saying why, when the program is missing."""
        reason = self.missing
        return pytest.mark.skipif(reason is not None, reason=reason or "")


FINDSCU = Peer(Path("/usr/bin/findscu"), "dcmtk")
ECHOSCU = Peer(Path("/usr/bin/echoscu"), "dcmtk")
DUMP2DCM = Peer(Path("/usr/bin/dump2dcm"), "dcmtk")
ORTHANC = Peer(Path("/usr/sbin/Orthanc"), "orthanc")
OPENSSL = Peer(Path("/usr/bin/openssl"), "openssl")
NMAP = Peer(Path("/usr/bin/nmap"), "nmap")
CHROMIUM = Peer(Path("/usr/bin/chromium"), "chromium")
NODE = Peer(Path("/usr/bin/node"), "nodejs")
# Scrapes the broker's /metrics (tests/e2e/test_monitoring.py); promtool checks the rules.
PROMETHEUS = Peer(Path("/usr/bin/prometheus"), "prometheus")
PROMTOOL = Peer(Path("/usr/bin/promtool"), "prometheus")

SLAPD = Peer(Path("/usr/sbin/slapd"), "slapd")
LDAPADD = Peer(Path("/usr/bin/ldapadd"), "ldap-utils")

# tests/audit: the ATNA audit repository (rsyslog-gnutls adds its TLS driver).
RSYSLOGD = Peer(Path("/usr/sbin/rsyslogd"), "rsyslog rsyslog-gnutls")

# tests/e2e/test_backup.py restores what `mwl backup` (pg_dump) wrote.
PG_RESTORE = Peer(Path("/usr/bin/pg_restore"), "postgresql-client")
# tests/e2e/test_rolling_upgrade.py exports the previous release with git archive.
GIT = Peer(Path("/usr/bin/git"), "git")

ALL = (
    FINDSCU,
    ECHOSCU,
    DUMP2DCM,
    ORTHANC,
    OPENSSL,
    NMAP,
    CHROMIUM,
    NODE,
    PROMETHEUS,
    PROMTOOL,
    SLAPD,
    LDAPADD,
    RSYSLOGD,
    PG_RESTORE,
    GIT,
)
