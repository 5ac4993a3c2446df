"""Examiner workbench: server-rendered pages (Jinja2 + htmx) under ``/web``, assets under ``/web/static``.

``api.main`` includes :data:`router` and mounts :func:`static_files`; see ``api/web/README.md``.
"""
from __future__ import annotations

from fastapi.staticfiles import StaticFiles

from api.web.routes import STATIC_DIR, router

__all__ = ["router", "static_files", "STATIC_PATH"]

#: where :func:`static_files` is mounted
STATIC_PATH = "/web/static"


def static_files() -> StaticFiles:
    """The workbench's own assets (CSS, JS, vendored htmx); no CDN."""
    return StaticFiles(directory=str(STATIC_DIR))
