"""File descriptors of the whole process: a high limit at start, and a reserve no listener eats.

Every connection costs a descriptor, and so does every database connection, log
file and web request. A listener that takes the last ones stops the others too
(``accept`` then fails with EMFILE everywhere, the database cannot open its
file). So the soft ``RLIMIT_NOFILE`` is raised to the hard one at start, and a
listener that serves long-lived connections from the outside (HL7) admits a new
one only while a reserve of descriptors stays free for the rest of the process.
"""

from __future__ import annotations

import logging
import os
import resource

logger = logging.getLogger(__name__)

# Descriptors kept free for the database, the web page, DICOM and the logs: at least
# this many, or an eighth of the limit when that is more.
MINIMUM_RESERVE = 64
_PROC_FD = "/proc/self/fd"


def raise_open_file_limit() -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard one; return the limits now in force.

    A limit that cannot be raised (a hard limit of "unlimited" the kernel refuses,
    a sandbox) is left as it is and logged; the reserve then works within it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == hard:
        return soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        logger.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
        return soft, hard
    logger.info("open-file limit raised from %d to %d", soft, hard)
    return hard, hard


def soft_limit() -> int:
    """The soft ``RLIMIT_NOFILE`` (a very large number when unlimited)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft if soft != resource.RLIM_INFINITY else 1 << 30


def reserve_for(limit: int) -> int:
    """How many descriptors stay free for the rest of the process under ``limit``."""
    return max(MINIMUM_RESERVE, limit // 8)


def open_descriptors(newest: int) -> int:
    """Descriptors the process has open, counted in /proc; ``newest + 1`` where there is none.

    The kernel hands out the lowest free number, so ``newest`` (a descriptor just
    opened) has every lower one in use: a lower bound when /proc cannot be read.
    """
    try:
        return len(os.listdir(_PROC_FD)) - 1  # the directory's own descriptor
    except OSError:
        return newest + 1


def reserve_reached(newest: int) -> bool:
    """Whether fewer than the reserve are free, counting ``newest`` (just accepted) as used."""
    limit = soft_limit()
    return limit - open_descriptors(newest) < reserve_for(limit)
