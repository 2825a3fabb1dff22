"""Every user's own page: who am I, change my password."""

from __future__ import annotations

from clearinghouse import audit
from clearinghouse.db import transaction
from console import accounts
from console.app import Page, Route
from console.web import Response, redirect

ALL = ("admin", "auditor", "integrator")


def show(page: Page) -> Response:
    done = page.request.arg("done") == "password"
    return page.render("account.html", error="", done=done)


def change_password(page: Page) -> Response:
    req = page.request
    name = page.user.account.name
    new, again = req.field("new_password"), req.field("new_password_again")
    refused: accounts.SignInRefused | None = None
    with transaction(page.console.sessions) as session:  # a wrong current password counts towards the lock-out
        try:
            accounts.authenticate(
                session,
                name,
                req.field("current_password"),
                attempts=page.settings.console_lockout_attempts,
                lock_minutes=page.settings.console_lockout_minutes,
                now=page.console.now(),
            )
        except accounts.SignInRefused as exc:
            refused = exc
    if refused is not None:
        page.console.audit_sign_in(name, req.remote_addr, audit.MINOR_FAILURE, f"password change: {refused.reason}")
        return page.render("account.html", status=403, error="the current password is wrong", done=False)
    try:
        if new != again:
            raise accounts.AccountError("the two new passwords differ")
        with transaction(page.console.sessions) as session:
            accounts.set_password(session, name, new)
    except accounts.AccountError as exc:
        return page.render("account.html", status=400, error=str(exc), done=False)
    return redirect("/account?done=password")


ROUTES = [
    Route("GET", "/account", ALL, show, "Account"),
    Route("POST", "/account/password", ALL, change_password),
]
