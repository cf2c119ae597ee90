"""What keeps other web pages away from a server on this machine, token or not.

A page on any site can make the browser send requests to ``http://127.0.0.1:8000``: a form POST needs no CORS
permission (the page cannot read the answer, but the job is queued), and DNS rebinding (a name of the attacker's that
resolves to 127.0.0.1 after the page has loaded) even lets the page read the answers, since the browser then takes the
server for the page's own origin. Two checks stop both: the ``Host`` header must name this server (a rebinding page
sends its own name there), and a state-changing request that carries an ``Origin`` must come from the page the server
itself serves. Programs (curl, Python) send no ``Origin`` and are not affected.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers

from wanflow.server.errors import error_body

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARDS = frozenset({"0.0.0.0", "::", ""})  # bound to every interface
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Hosts:
    """The host names a request's ``Host`` header may carry."""

    names: frozenset[str] = LOOPBACK_NAMES
    any_address: bool = False  # any IP literal (a server bound to every interface does not know its addresses)
    anything: bool = False  # ``--allowed_hosts '*'``: the check is off (e.g. behind a proxy that checks it)
    pages: frozenset[str] = frozenset()  # names given by the operator: a page there may change jobs (a proxy's name)

    @classmethod
    def for_bind(cls, host: str, extra: Iterable[str] = ()) -> Hosts:
        """What a server bound to ``host`` answers to: that address, the loopback names, and ``extra``."""
        extra = [name.strip().lower().strip("[]") for name in extra if name.strip()]
        bound = host.strip().lower().strip("[]")
        names = LOOPBACK_NAMES | {bound} | set(extra)
        pages = frozenset(extra) - {"*"}
        return cls(frozenset(names - {"*"}), any_address=bound in WILDCARDS, anything="*" in extra, pages=pages)

    def allows(self, name: str) -> bool:
        return self.anything or name in self.names or (self.any_address and _is_address(name))


def host_name(header: str) -> str | None:
    """The host name of a ``Host`` header ("127.0.0.1:8000" -> "127.0.0.1", "[::1]:8000" -> "::1"); None if bad."""
    try:
        return urlsplit("//" + header).hostname
    except ValueError:
        return None


class Guard:
    """ASGI middleware: a foreign ``Host`` answers 421, a cross-origin state-changing request 403."""

    def __init__(self, app, hosts: Hosts):
        self.app, self.hosts = app, hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            refusal = self.refusal(Headers(scope=scope), scope["method"])
            if refusal is not None:
                status, message = refusal
                response = JSONResponse(error_body(Request(scope), status, message), status)
                return await response(scope, receive, send)
        if scope["type"] == "websocket":  # (a browser opens one from any page: no CORS; checked as a change)
            if self.refusal(Headers(scope=scope), "WEBSOCKET") is not None:
                await receive()  # (websocket.connect)
                return await send({"type": "websocket.close", "code": 1008})
        await self.app(scope, receive, send)

    def refusal(self, headers: Headers, method: str) -> tuple[int, str] | None:
        host = headers.get("host", "")
        name = host_name(host)
        if name is None or not self.hosts.allows(name):
            return 421, (
                f"this server does not answer to the host {host!r}; if that name is really this server, start it "
                f"with --allowed_hosts {name or host}"
            )
        if method in SAFE_METHODS:
            return None
        origin = headers.get("origin")
        if origin is None:  # not a browser, or a browser that tells where the request comes from another way
            if headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none"):
                return None
            return 403, "cross-site request refused: send it from the server's own page, or without a browser"
        page = urlsplit(origin)
        if page.netloc.lower() != host.lower() and (page.hostname or "") not in self.hosts.pages:
            return 403, f"cross-origin request from {origin!r} refused: only the server's own page may change jobs"
        return None
