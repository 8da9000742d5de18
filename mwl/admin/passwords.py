"""The password policy of the web users (NIST SP 800-63B rev. 4, a password used alone).

Length is what makes a password hard to guess, so the policy asks for length and
refuses the passwords an attacker tries first; it sets no composition rules (no
"one digit, one capital"), which NIST advises against because they push people to
predictable patterns. Both ``mwl user`` and the web page call :func:`check_password_policy`
through :mod:`mwl.admin.users`, so they can never disagree.
"""

from __future__ import annotations

import enum
import functools
import unicodedata
from importlib import resources

from mwl.errors import UserError

# NIST SP 800-63B rev. 4, 3.1.1.2: at least 15 characters for a password that is the
# only factor; a maximum of at least 64 must be allowed.
MIN_LENGTH = 15
MAX_LENGTH = 128

# Shipped with the package; where it comes from and its licence: common_passwords.LICENSE.
_COMMON_PASSWORDS = "common_passwords.txt"


class PasswordRule(enum.StrEnum):
    """Which rule a refused password breaks; the web page translates by this."""

    TOO_SHORT = "too_short"
    TOO_LONG = "too_long"
    COMMON = "common"
    REPEATED = "repeated"
    CONTAINS_USERNAME = "contains_username"


class WeakPasswordError(UserError):
    """A password the policy refuses; ``rule`` says why."""

    def __init__(self, rule: PasswordRule, reason: str, username: str = "") -> None:
        self.rule = rule
        super().__init__(reason, username)


def comparable(text: str) -> str:
    """``text`` as the policy compares it: NFKC-normalised and case-folded.

    NFKC makes look-alike forms (full-width letters, ligatures) equal to the plain
    ones, so ``ｐａｓｓｗｏｒｄ`` is as common as ``password``.
    """
    return unicodedata.normalize("NFKC", text).casefold()


@functools.cache
def common_passwords() -> frozenset[str]:
    """The shipped list of common passwords, in :func:`comparable` form (read once)."""
    text = resources.files(__package__).joinpath(_COMMON_PASSWORDS).read_text("utf-8")
    return frozenset(comparable(line) for line in text.splitlines() if line)


def password_problem(password: str, username: str = "") -> WeakPasswordError | None:
    """Why ``password`` breaks the policy for the account ``username``, or None.

    Parameters
    ----------
    password
        The clear-text password as typed (nothing is stripped: spaces count).
    username
        The account's name; the password must neither be it nor contain it.

    Returns
    -------
    WeakPasswordError | None
        The first rule broken (to raise or to show), or None for an acceptable password.
    """
    key = comparable(password)
    # Characters are counted after normalisation, as NIST asks (one code point each).
    if len(key) < MIN_LENGTH:
        if not password:
            return WeakPasswordError(PasswordRule.TOO_SHORT, "the password must not be empty")
        return WeakPasswordError(
            PasswordRule.TOO_SHORT,
            f"the password is shorter than {MIN_LENGTH} characters",
        )
    if len(key) > MAX_LENGTH:
        return WeakPasswordError(
            PasswordRule.TOO_LONG, f"the password is longer than {MAX_LENGTH} characters"
        )
    if len(set(key)) == 1:
        return WeakPasswordError(
            PasswordRule.REPEATED, "the password is one character repeated; choose another"
        )
    if key in common_passwords():
        return WeakPasswordError(
            PasswordRule.COMMON, "the password is in the list of common passwords; choose another"
        )
    name = comparable(username.strip())
    if name and name in key:
        return WeakPasswordError(
            PasswordRule.CONTAINS_USERNAME, "the password must not contain the user name"
        )
    return None


def check_password_policy(password: str, username: str = "") -> None:
    """Raise :class:`WeakPasswordError` when ``password`` breaks the policy.

    See :func:`password_problem` for the parameters.
    """
    problem = password_problem(password, username)
    if problem is not None:
        raise problem
