"""The job console: server-rendered pages at /console, served by the api.

Log in with an API key, see backlog and throughput, find, inspect, retry and cancel
jobs. Templates and static files ship in this package: no build step, no CDN.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from app.console import actions, auth, detail, pages
from app.console.render import STATIC, page
from app.console.scope import NotFound


async def _login_required(request: Request, _: Exception) -> Response:
    return RedirectResponse("/console/login", status_code=303)


async def _csrf_refused(request: Request, _: Exception) -> Response:
    return page(request, "error.html", {"status": 403, "login": None, "message":
                "This form has expired or did not come from the console. Go back, reload "
                "the page and try again."}, status=403)


async def _too_large(request: Request, _: Exception) -> Response:
    return page(request, "error.html", {"status": 413, "login": None, "message":
                "That form is larger than any form of the console."}, status=413)


async def _not_found(request: Request, exc: Exception) -> Response:
    return page(request, "error.html", {"status": 404, "login": None, "message": str(exc)},
                status=404)


def install(app: FastAPI) -> None:
    """Serve the console at /console on this app."""
    for module in (auth, pages, detail, actions):
        app.include_router(module.router)
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")
    app.add_exception_handler(auth.LoginRequired, _login_required)
    app.add_exception_handler(auth.CsrfRefused, _csrf_refused)
    app.add_exception_handler(auth.FormTooLarge, _too_large)
    app.add_exception_handler(NotFound, _not_found)
