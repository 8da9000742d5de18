"""A second step before a destructive action, without JavaScript.

The first POST (the button on the page) renders a confirmation page that repeats
the same POST with every field kept and ``confirm=yes`` added; only that second POST
acts. A keyboard or screen reader user reads what will happen, and may go back.
"""

from __future__ import annotations

from collections.abc import Sequence

from flask import render_template, request

CONFIRM_FIELD = "confirm"


def confirmed() -> bool:
    """Whether this POST is the second one, sent from the confirmation page."""
    return request.form.get(CONFIRM_FIELD) == "yes"


def confirmation_page(
    *,
    title: str,
    question: str,
    button: str,
    back_url: str,
    details: Sequence[str] = (),
    undo: str = "",
    reason_label: str = "",
) -> str:
    """The page asking to confirm the current POST; it posts the same fields back.

    Parameters
    ----------
    title, question
        The heading and what exactly will happen.
    button
        The label of the confirming button (names the action: "Cancel the step").
    back_url
        Where "Go back" leads (nothing is changed).
    details
        Lines naming what is affected (a step, a token, the rows removed).
    undo
        How the action can be undone, or that it cannot.
    reason_label
        When set, the page asks for a reason (kept in the audit trail) under this label.
    """
    kept = [
        (name, value)
        for name, value in request.form.items(multi=True)
        if name not in ("csrf_token", CONFIRM_FIELD, "reason" if reason_label else "")
    ]
    return render_template(
        "confirm.html",
        title=title,
        question=question,
        button=button,
        back_url=back_url,
        details=details,
        undo=undo,
        kept=kept,
        action=request.path,
        reason_label=reason_label,
        reason=request.form.get("reason", ""),
    )
