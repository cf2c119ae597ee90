"""uvicorn's access log as a server of this kind wants it: no token in it, and not one line per poll.

The web page asks for the job list and the health every 10 seconds, and a client waiting for a job asks for it
over and over; a line for each buries the lines that matter (submissions, cancels, errors, downloads).
"""

from __future__ import annotations

import logging
import re

ACCESS_TOKEN = re.compile(r"(?<=[?&]access_token=)[^&\s\"]*")
POLLED = re.compile(r"/health|/api/tasks|/api/jobs|/api/jobs/[0-9a-f]{32}|/v1/videos|/v1/videos/[0-9a-f]{32}")


def redact(text: str) -> str:
    """``...?access_token=secret`` -> ``...?access_token=[redacted]``."""
    return ACCESS_TOKEN.sub("[redacted]", text)


class AccessLog(logging.Filter):
    """Drops the successful GETs of the polled routes; redacts ``access_token`` from the rest."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not isinstance(args, tuple) or len(args) != 5:  # (client, method, path?query, http version, status)
            return True
        client, method, target, version, status = args
        path = str(target).partition("?")[0]
        if method in ("GET", "HEAD") and isinstance(status, int) and status < 400 and POLLED.fullmatch(path):
            return False
        record.args = (client, method, redact(str(target)), version, status)
        return True


class WebSocketLog(logging.Filter):
    """Redacts ``access_token`` from uvicorn's lines of a websocket's opening (``'%s - "WebSocket %s" ...'``, which
    it writes to its error logger, with the query string)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and '"WebSocket %s"' in record.msg and isinstance(record.args, tuple):
            record.args = tuple(redact(str(a)) if i == 1 else a for i, a in enumerate(record.args))
        return True


def quiet_access_log(logger: logging.Logger | None = None) -> AccessLog:
    """Adds the filter to uvicorn's access logger (once), and ``WebSocketLog`` to its error logger (once); returns
    the first, for ``logger.removeFilter``."""
    errors = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, WebSocketLog) for f in errors.filters):
        errors.addFilter(WebSocketLog())
    logger = logger or logging.getLogger("uvicorn.access")
    for existing in logger.filters:
        if isinstance(existing, AccessLog):
            return existing
    access = AccessLog()
    logger.addFilter(access)
    return access
