"""The admin settings pages as a browser fills them in, for tests: log in, read a form, post it."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.datastructures import MultiDict
from werkzeug.test import TestResponse

from mwl.admin.users import add_user

PASSWORD = "correct horse battery staple"
_CSRF_INPUT = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')

FormValues = dict[str, list[str]]


class _FormReader(HTMLParser):
    """What a browser would submit from the form posting to ``action``."""

    def __init__(self, action: str) -> None:
        super().__init__(convert_charrefs=True)
        self.action = action
        self.inside = False
        self.values: FormValues = {}
        self._select: str | None = None
        self._first_option: str | None = None
        self._textarea: str | None = None

    def _add(self, name: str, value: str) -> None:
        self.values.setdefault(name, []).append(value)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.inside = a.get("action") == self.action
        if not self.inside:
            return
        name = a.get("name", "")
        if tag == "input" and name:
            kind = a.get("type", "text")
            if kind in ("checkbox", "radio"):
                if "checked" in a:
                    self._add(name, a.get("value", "on"))
            elif kind not in ("submit", "button"):
                self._add(name, a.get("value", ""))
        elif tag == "select":
            self._select = name
            self._first_option = None
            self.values.setdefault(name, [])
        elif tag == "option" and self._select:
            if self._first_option is None:
                self._first_option = a.get("value", "")
            if "selected" in a:
                self._add(self._select, a.get("value", ""))
        elif tag == "textarea":
            self._textarea = name
            self._add(name, "")

    def handle_data(self, data: str) -> None:
        if self._textarea:
            self.values[self._textarea][-1] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.inside = False
        elif tag == "select" and self._select is not None:
            # A single select with nothing selected sends its first option.
            if not self.values[self._select] and self._first_option is not None:
                self._add(self._select, self._first_option)
            self._select = None
        elif tag == "textarea":
            self._textarea = None


def form_values(html: str, action: str) -> FormValues:
    """The values the form posting to ``action`` would send as it stands."""
    reader = _FormReader(action)
    reader.feed(html)
    # A textarea's text starts after the newline that follows its tag (HTML rule).
    return {
        name: [v.removeprefix("\r").removeprefix("\n") for v in values]
        for name, values in reader.values.items()
    }


def submit(
    client: FlaskClient, path: str, changes: dict[str, str | list[str] | None]
) -> TestResponse:
    """Load ``path``, change fields (None: untick or drop), post the form back."""
    page = client.get(path)
    assert page.status_code == 200, page.status_code
    values = form_values(page.get_data(as_text=True), path)
    assert values, f"no form posting to {path}"
    for name, value in changes.items():
        if value is None:
            values.pop(name, None)
        else:
            values[name] = [value] if isinstance(value, str) else list(value)
    return client.post(path, data=MultiDict([(k, v) for k, vs in values.items() for v in vs]))


def csrf_token(client: FlaskClient, path: str = "/login") -> str:
    """A CSRF token from a form of ``path``."""
    found = _CSRF_INPUT.search(client.get(path).get_data(as_text=True))
    assert found, f"no csrf_token on {path}"
    return found.group(1)


def add_account(session_factory: sessionmaker[Session], username: str, role: str) -> None:
    """Create a user with ``role`` and the password :data:`PASSWORD`."""
    with session_factory.begin() as session:
        add_user(session, username, PASSWORD, role)


def log_in(client: FlaskClient, username: str) -> FlaskClient:
    """Log ``client`` in as ``username`` (password :data:`PASSWORD`)."""
    response = client.post(
        "/login",
        data={"username": username, "password": PASSWORD, "csrf_token": csrf_token(client)},
    )
    assert response.status_code == 302, response.status_code
    return client


def log_in_as(
    client: FlaskClient, session_factory: sessionmaker[Session], username: str, role: str
) -> FlaskClient:
    """Create a user with ``role`` and log ``client`` in as that user."""
    add_account(session_factory, username, role)
    return log_in(client, username)
