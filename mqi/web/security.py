"""Who may talk to the dashboard, and the headers a hospital's security review expects.

- Loopback binds need no token (but a ``Host`` other than 127.0.0.1, localhost or ::1 is
  refused, against DNS rebinding); any other bind needs an access token (``web.token`` or the
  variable ``web.token_env`` names) or an authenticating reverse proxy's header
  (``web.trusted_proxy_header``), else ``mqi serve`` refuses to start
  (:meth:`mqi.config.WebConfig.check_bind`).
- With a token, every request carries it: ``Authorization: Bearer T``, or the cookie set
  when a browser opens any page once with ``?token=T``. Compared in constant time; 401
  otherwise.
- State changes are POST forms carrying a CSRF token equal to the ``mqi_csrf`` cookie
  (double submit, SameSite=Strict); a foreign ``Origin`` is refused too. 403 otherwise.
- Every response: a CSP without inline scripts or styles, nosniff, no framing, no referrer;
  everything but the static files: ``Cache-Control: no-store`` (patient data).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import URL, MutableHeaders
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from mqi.config import WebConfig

TOKEN_COOKIE = "mqi_token"
CSRF_COOKIE = "mqi_csrf"
CSRF_FIELD = "csrf"

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'self'; frame-src 'self'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def same_secret(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def csrf_token(request: Request) -> str:
    """The browser's CSRF token (its cookie), or a new one the response must set."""
    token = request.cookies.get(CSRF_COOKIE)
    if token and len(token) >= 32:
        return token
    new = getattr(request.state, "new_csrf", None)
    if new is None:
        new = secrets.token_urlsafe(32)
        request.state.new_csrf = new
    return new


def set_csrf_cookie(request: Request, response: Response) -> None:
    new = getattr(request.state, "new_csrf", None)
    if new:
        response.set_cookie(CSRF_COOKIE, new, httponly=True, samesite="strict", path="/")


def csrf_ok(request: Request, form: dict[str, str]) -> bool:
    """The form's token equals the cookie's, and the request comes from this site."""
    origin = request.headers.get("origin")
    if origin and origin != "null":
        host = request.headers.get("host", "")
        if URL(origin).netloc != host:
            return False
    cookie = request.cookies.get(CSRF_COOKIE)
    return bool(cookie) and same_secret(form.get(CSRF_FIELD), cookie or "")


LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


def _host_name(host: str) -> str:
    """``Host`` header -> the name without the port (``[::1]:8050`` -> ``::1``)."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


class Guard:
    """ASGI middleware: access token or proxy header, and the security headers."""

    def __init__(self, app: ASGIApp, web: WebConfig) -> None:
        self.app = app
        self.token = web.access_token()
        self.proxy_header = web.trusted_proxy_header.lower() if web.trusted_proxy_header else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        static = request.url.path.startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                headers["cache-control"] = "public, max-age=3600" if static else "no-store"
            await send(message)

        denied = self._deny(request)
        if denied is not None:
            await denied(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def _deny(self, request: Request) -> Response | None:
        if self.proxy_header and request.headers.get(self.proxy_header):
            return None
        if self.token is None:
            if self.proxy_header:
                return PlainTextResponse("401: this dashboard is reached through its proxy", 401)
            # Open to this machine only: a page elsewhere whose name resolves to 127.0.0.1
            # (DNS rebinding) must not read it through the user's browser.
            if _host_name(request.headers.get("host", "")) not in LOOPBACK_NAMES:
                return PlainTextResponse("403: without an access token only http://127.0.0.1 works", 403)
            return None
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer ") and same_secret(auth[7:].strip(), self.token):
            return None
        if same_secret(request.cookies.get(TOKEN_COOKIE), self.token):
            return None
        if same_secret(request.query_params.get("token"), self.token):
            # Once from a link: keep it in a cookie and take it out of the address bar.
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = request.url.path + ("?" + urlencode(rest) if rest else "")
            response = RedirectResponse(target, status_code=303)
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict", path="/")
            return response
        return PlainTextResponse(
            "401: this dashboard needs its access token (Authorization: Bearer, or ?token= once)",
            401,
            headers={"www-authenticate": "Bearer"},
        )
