"""The FastAPI application: ``create_app(settings)``; OpenAPI docs at ``/docs``."""
from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from api import web
from api.errors import install_error_handlers
from api.routes import audit, candidates, exhibits, export, hits, jobs, keys, reviews, series, system
from api.runtime import Runtime
from api.settings import Settings

__all__ = ["create_app"]

log = logging.getLogger("ballistic.api")

DESCRIPTION = """Correlation service of `ballistic`: submit breech-face scans, get ranked candidates
re-scored with Congruent Matching Cells, review them, and follow confirmed hits.

Authenticate with an API key in the `X-API-Key` header (or `Authorization: Bearer <key>`).
Scopes: **examiner** (submit, read evidence, review), **intelligence** (hits feed, series, exports
only), **admin** (everything, keys, audit verification)."""


class BodyLimit:
    """Refuse a request whose declared body exceeds the upload limit before reading it (413)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            for k, v in scope.get("headers", ()):
                if k == b"content-length":
                    try:
                        n = int(v)
                    except ValueError:
                        n = -1
                    if n > self.max_bytes or n < 0:
                        body = json.dumps({"detail": f"request body of {v.decode('latin-1')} bytes refused: the "
                                                     f"limit is {self.max_bytes} bytes (max_upload_bytes)"}).encode()
                        code = 413 if n > 0 else 400
                        await send({"type": "http.response.start", "status": code,
                                    "headers": [(b"content-type", b"application/json"),
                                                (b"content-length", str(len(body)).encode()),
                                                (b"connection", b"close")]})
                        await send({"type": "http.response.body", "body": body})
                        return
                    break
        await self.app(scope, receive, send)


#: echoed inputs in 422 bodies are cut to this many characters (and containers to this many items)
ECHO_CHARS, ECHO_ITEMS = 120, 10


def short_echo(value, depth: int = 0):
    """``value`` cut for echoing back in an error body: long text keeps its start and says how long it was,
    containers keep their first items, nesting stops at 3 levels. A 1 MB field gives a few hundred bytes."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    if isinstance(value, str):
        return value if len(value) <= ECHO_CHARS else f"{value[:ECHO_CHARS]}... ({len(value)} characters)"
    if isinstance(value, dict):
        if depth >= 3:
            return f"({len(value)} fields)"
        out = {short_echo(str(k)): short_echo(v, depth + 1) for k, v in list(value.items())[:ECHO_ITEMS]}
        if len(value) > ECHO_ITEMS:
            out["..."] = f"{len(value) - ECHO_ITEMS} more fields"
        return out
    if isinstance(value, (list, tuple)):
        if depth >= 3:
            return f"({len(value)} items)"
        out = [short_echo(v, depth + 1) for v in value[:ECHO_ITEMS]]
        return out + [f"... {len(value) - ECHO_ITEMS} more items"] if len(value) > ECHO_ITEMS else out
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return short_echo(str(value), depth)


async def validation_error(request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 body (a list of errors with loc, msg, type, input, ctx) with every echoed value cut
    (:func:`short_echo`): a 1 MB metadata field no longer comes back as a 1 MB error."""
    errors = []
    for e in exc.errors():
        e = dict(e)
        for k in ("input", "ctx"):
            if k in e:
                e[k] = short_echo(jsonable_encoder(e[k], custom_encoder={BaseException: str}))
        e["msg"] = short_echo(str(e.get("msg", "")))
        e["loc"] = [short_echo(x) for x in e.get("loc", ())][:ECHO_ITEMS]
        errors.append(e)
    return JSONResponse(status_code=422, content={"detail": errors})


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        rt = Runtime(settings).start()
        app.state.runtime = rt
        log.info("ballistic service started: %s", rt.startup_report)
        try:
            yield
        finally:
            rt.stop()

    app = FastAPI(title="ballistic correlation service", version="1", description=DESCRIPTION, lifespan=lifespan)
    app.add_exception_handler(RequestValidationError, validation_error)
    for r in (exhibits, jobs, candidates, reviews, hits, series, export, audit, keys, system):
        app.include_router(r.router)
    app.include_router(web.router)  # examiner workbench (browser pages under /web, api/web/README.md)
    app.mount(web.STATIC_PATH, web.static_files(), name="web-static")
    install_error_handlers(app)  # library errors -> 413 / 422 / 503 (api/errors.py)
    # multipart overhead on top of the file itself
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes + (1 << 20))
    return app
