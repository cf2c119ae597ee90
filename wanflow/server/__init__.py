"""``wanflow serve``: an HTTP server with a job queue, OpenAI's video API shape, and a web page.

Needs the ``server`` extra (fastapi, uvicorn, python-multipart, and fastapi-offline for the API docs' files).
``create_app`` is imported lazily so that ``import wanflow.server`` works without them.
"""

from __future__ import annotations


def create_app(*args, **kwargs):
    from wanflow.server.app import create_app as _create_app

    return _create_app(*args, **kwargs)


__all__ = ["create_app"]
