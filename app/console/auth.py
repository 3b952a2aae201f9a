"""Console login and logout, the session cookie, and the CSRF check of every action."""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from app.config import get_settings
from app.console import sessions
from app.console.render import page
from app.console.sessions import Login
from app.jobs.keys import authenticate
from app.store.db import driver_autocommit

router = APIRouter(prefix="/console", include_in_schema=False)

#: The login cookie: an opaque secret, whose sha256 names the server-side session.
COOKIE = "bq_console"
#: Before login: the double-submit token of the login form (there is no session yet).
LOGIN_COOKIE = "bq_console_login"
#: Longest form body the console reads (a key, a CSRF token, a few filters).
MAX_FORM_BYTES = 16_384


class LoginRequired(Exception):
    """No live session: the browser is sent to the login page."""


class CsrfRefused(Exception):
    """An action without this session's CSRF token: refused with 403."""


class FormTooLarge(Exception):
    """A form body larger than any console form: refused with 413 unread."""


def _cookie_args() -> dict[str, object]:
    """httpOnly, SameSite=Strict, scoped to /console; Secure in production (behind TLS)."""
    return {"httponly": True, "samesite": "strict", "path": "/console",
            "secure": get_settings().env == "production"}


def _lookup(token: str) -> Login | None:
    with driver_autocommit() as conn:
        return sessions.lookup(conn, token)


async def current_login(request: Request) -> Login:
    """The live login of this browser, re-checked against the database on every request."""
    token = request.cookies.get(COOKIE)
    login = await run_in_threadpool(_lookup, token) if token else None
    if login is None:
        raise LoginRequired
    return login


LoginDep = Annotated[Login, Depends(current_login)]


async def form_fields(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (the first value of each)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_FORM_BYTES:
        raise FormTooLarge
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise FormTooLarge
    fields = parse_qs(body.decode(errors="replace"), keep_blank_values=True)
    return {k: v[0] for k, v in fields.items()}


def _same(sent: str, expected: str) -> bool:
    """Constant-time equality of two tokens (as bytes: a form may send any text)."""
    return hmac.compare_digest(sent.encode(), expected.encode())


async def checked_form(request: Request, login: LoginDep) -> dict[str, str]:
    """The form of an action, once its CSRF token has been found to be this session's."""
    fields = await form_fields(request)
    if not _same(fields.get("csrf", ""), login.csrf):
        raise CsrfRefused
    return fields


FormDep = Annotated[dict[str, str], Depends(checked_form)]


@router.get("/login")
def login_form(request: Request) -> Response:
    """The login form, with a fresh double-submit token."""
    token = secrets.token_urlsafe(24)
    response = page(request, "login.html", {"csrf": token, "error": None})
    response.set_cookie(LOGIN_COOKIE, token, max_age=3600, **_cookie_args())  # type: ignore[arg-type]
    return response


def _principal_of(key: str) -> tuple[str, None] | tuple[None, str]:
    """(cookie value, None) for a live key, else (None, why)."""
    with driver_autocommit() as conn:
        principal = authenticate(conn, key) if key else None
        if principal is None:
            return None, "That key is unknown or revoked."
        return sessions.start(conn, principal), None


@router.post("/login")
async def login(request: Request) -> Response:
    """Exchange an API key for a session cookie; the key itself is never stored."""
    fields = await form_fields(request)
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not _same(fields.get("csrf", ""), expected):
        raise CsrfRefused
    token, error = await run_in_threadpool(_principal_of, fields.get("key", "").strip())
    if token is None:
        return page(request, "login.html", {"csrf": expected, "error": error}, status=401)
    response: Response = RedirectResponse("/console", status_code=303)
    response.set_cookie(COOKIE, token, max_age=int(sessions.SESSION_LIFETIME.total_seconds()),
                        **_cookie_args())  # type: ignore[arg-type]
    response.delete_cookie(LOGIN_COOKIE, path="/console")
    return response


def _end(token: str) -> None:
    with driver_autocommit() as conn:
        sessions.end(conn, token)


@router.post("/logout")
async def logout(request: Request, _: FormDep) -> Response:
    """End the session here and on the server."""
    await run_in_threadpool(_end, request.cookies.get(COOKIE, ""))
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(COOKIE, path="/console")
    return response
