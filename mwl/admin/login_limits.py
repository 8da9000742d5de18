"""Failed logins, counted in the database per user name and per client address.

Guessing is slowed down, never locked out: after a number of free failures each
further attempt has to wait a delay that doubles with every failure, up to a cap.
The counts are shared by every broker on the database.

- Per address, over any user names: an address trying many names (or one) is
  held back, whichever accounts it tries.
- Per user name, over any address: spreading guesses over many addresses does
  not escape the count. The delay applies only to addresses that have failed
  recently themselves, so an attacker cannot keep the real user out: from a
  clean address (no recent failure) the real user logs in at once.

While a delay runs the attempt is refused before the password is looked at, with
the same answer whether the password was right, wrong, or the user unknown, so
the refusal tells nothing about the account. Refused attempts are not counted as
failures (no password was tried), but every refusal and every failure is written
to the audit trail.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

from sqlalchemy import case, delete, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mwl.operations import metrics
from mwl.operations.audit import record_event
from mwl.store.models import LoginFailure, utcnow

USER = "user"
ADDRESS = "address"

# Audit actions (audit_event.action).
LOGIN_FAILED = "login failed"
LOGIN_DELAYED = "login delayed"


@dataclass(frozen=True)
class LoginPolicy:
    """Free failures per user name and per address, and the delay after them.

    After ``n`` >= free failures, the next attempt waits
    ``min(first_delay * 2 ** (n - free), max_delay)`` after the last failure. A
    count is forgotten after ``forget_after`` without a failure.
    """

    free_per_user: int = 5
    free_per_address: int = 20
    first_delay: dt.timedelta = dt.timedelta(seconds=5)
    max_delay: dt.timedelta = dt.timedelta(minutes=15)
    forget_after: dt.timedelta = dt.timedelta(hours=1)

    def delay(self, failures: int, free: int) -> dt.timedelta:
        """How long after its last failure a key with ``failures`` failures waits."""
        if failures < free:
            return dt.timedelta(0)
        # Past 2**20 the cap applies anyway; the exponent is bounded so it never overflows.
        factor: int = 2 ** min(failures - free, 20)
        return min(self.first_delay * factor, self.max_delay)


def _key_hash(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def _row(session: Session, scope: str, value: str) -> LoginFailure | None:
    return session.get(LoginFailure, (scope, _key_hash(value)))


def retry_after(
    session: Session,
    username: str,
    address: str,
    policy: LoginPolicy,
    now: dt.datetime | None = None,
) -> float:
    """Seconds ``address`` must still wait before trying ``username``; 0 when it may now.

    Parameters
    ----------
    username
        The normalized user name as typed (known or not).
    address
        The client address.
    """
    now = now or utcnow()
    by_address = _row(session, ADDRESS, address)
    if by_address is None or now - by_address.last_failure_at >= policy.forget_after:
        # A clean address: the real user's own console, not held back by others' guesses.
        return 0.0
    wait = by_address.last_failure_at + policy.delay(by_address.failures, policy.free_per_address)
    by_user = _row(session, USER, username)
    if by_user is not None and now - by_user.last_failure_at < policy.forget_after:
        until = by_user.last_failure_at + policy.delay(by_user.failures, policy.free_per_user)
        wait = max(wait, until)
    return max((wait - now).total_seconds(), 0.0)


def _count(session: Session, scope: str, value: str, policy: LoginPolicy, now: dt.datetime) -> None:
    key = _key_hash(value)
    cutoff = now - policy.forget_after
    # One statement, so two brokers counting at once both count.
    change = (
        update(LoginFailure)
        .where(LoginFailure.scope == scope, LoginFailure.key_hash == key)
        .values(
            failures=case(
                (LoginFailure.last_failure_at <= cutoff, 1), else_=LoginFailure.failures + 1
            ),
            last_failure_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if getattr(session.execute(change), "rowcount", 0):
        return
    try:
        with session.begin_nested():
            session.add(LoginFailure(scope=scope, key_hash=key, failures=1, last_failure_at=now))
    except IntegrityError:
        # Another broker inserted it between our update and insert.
        session.execute(change)


def record_failure(
    session: Session,
    username: str,
    address: str,
    policy: LoginPolicy,
    now: dt.datetime | None = None,
) -> None:
    """Count a wrong password (or unknown user) and audit it; the caller commits."""
    now = now or utcnow()
    metrics.login_failed("password")
    _count(session, USER, username, policy, now)
    _count(session, ADDRESS, address, policy, now)
    record_event(session, username[:64], LOGIN_FAILED, subject=address)


def record_refusal(session: Session, username: str, address: str, wait: float) -> None:
    """Audit an attempt refused because its delay had not passed; the caller commits."""
    metrics.login_failed("throttled")
    record_event(
        session,
        username[:64],
        LOGIN_DELAYED,
        subject=address,
        reason=f"too many failed logins; {wait:.0f} s to wait",
    )


def record_success(session: Session, username: str) -> None:
    """Forget the user name's failures after a good login; the caller commits.

    The address keeps its count: an attacker with an account of their own must not
    wipe their address's record by logging in between guesses.
    """
    session.execute(
        delete(LoginFailure).where(
            LoginFailure.scope == USER, LoginFailure.key_hash == _key_hash(username)
        )
    )


def purge_forgotten(session: Session, policy: LoginPolicy, now: dt.datetime | None = None) -> int:
    """Delete counts no longer in force; the caller commits."""
    now = now or utcnow()
    result = session.execute(
        delete(LoginFailure).where(LoginFailure.last_failure_at <= now - policy.forget_after)
    )
    return int(getattr(result, "rowcount", 0) or 0)
