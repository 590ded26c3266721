"""The HTTP front of ``deqa serve``: a FastAPI app over a :class:`~deqa.serve.service.ScoringService`.

Endpoints (full reference with examples: ``docs/serving.md``; live: ``/docs``):

- ``POST /score``: images as multipart file fields named ``image`` (any number, in order), or a
  JSON body ``{"images": ["<base64>", {"name": "a.jpg", "data": "<base64>"}, ...]}``, or one image
  as the raw body (``Content-Type: image/*``). Answers 200 with ``{"model", "results": [...]}``,
  one row per image in order: ``name, score, std, p_bad .. p_excellent`` or ``name, error``.
- ``GET /health``: 200 with the model, device, limits and counters while the model thread runs,
  503 if it stopped. Never needs the API key.
- ``GET /``: an upload page (:mod:`deqa.serve.page`); ``/docs`` (Swagger UI) and ``/redoc``, both
  served from local files (``fastapi-offline``), and ``/openapi.json``.

Refusals are JSON ``{"error": "<reason>"}``: 400 malformed body or no image, 401 missing or wrong
API key (``X-API-Key: KEY`` or ``Authorization: Bearer KEY``), 413 body over ``max_request_mb``
(checked from ``Content-Length`` before reading, and while reading a chunked body) or more than
``max_images`` images, 415 unsupported content type, 503 with ``Retry-After`` when ``max_requests``
requests are already being handled or the images would overflow ``max_queue``. An unreadable
image is never a refusal: it is that image's ``error`` row.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import signal
import socket
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect

from deqa import __version__
from deqa.serve.page import upload_page
from deqa.serve.service import Limits, ScoringService

log = logging.getLogger(__name__)


class Refusal(Exception):
    """A request the server will not score: HTTP ``status`` with a one-line ``reason``."""

    def __init__(self, status: int, reason: str, headers: dict | None = None):
        super().__init__(reason)
        self.status, self.reason, self.headers = status, reason, headers or {}


class _TooLarge(Exception):
    pass


# -- OpenAPI descriptions (the handler parses the body itself, so these only document it) -------
class ScoreRow(BaseModel):
    name: str = Field(description="the multipart file name, the JSON item's name, or its index")
    score: float | None = Field(None, description="probability-weighted quality level on 1..5")
    std: float | None = Field(None, description="predicted std of the score")
    p_bad: float | None = None
    p_poor: float | None = None
    p_fair: float | None = None
    p_good: float | None = None
    p_excellent: float | None = None
    error: str | None = Field(None, description="why this image could not be scored (then no score)")


class ScoreAnswer(BaseModel):
    model: str
    results: list[ScoreRow]


class ErrorAnswer(BaseModel):
    error: str


_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"image": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                "required": ["image"],
            }
        },
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "images": {
                        "type": "array",
                        "items": {
                            "oneOf": [
                                {"type": "string", "description": "base64 image file (a data: URL prefix is allowed)"},
                                {
                                    "type": "object",
                                    "properties": {"name": {"type": "string"}, "data": {"type": "string"}},
                                    "required": ["data"],
                                },
                            ]
                        },
                    }
                },
                "required": ["images"],
            }
        },
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    },
}
_REFUSALS = {
    code: {"model": ErrorAnswer, "description": text}
    for code, text in {
        400: "malformed body, or no image in it",
        401: "missing or wrong API key",
        413: "body over the size limit, or too many images in one request",
        415: "unsupported content type",
        503: "overloaded (see Retry-After) or the model thread stopped",
    }.items()
}


# -- reading a request's images ---------------------------------------------------------------
def _limited(receive, limit: int):
    """``receive`` that raises :class:`_TooLarge` once the body passes ``limit`` bytes."""
    seen = 0

    async def wrapped():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge
        return message

    return wrapped


async def read_uploads(request: Request, limits: Limits) -> list[tuple[str, bytes | str]]:
    """The request's images as ``(name, bytes)``, or ``(name, reason)`` for an item already known bad."""
    limit = limits.max_request_bytes
    too_large = f"the request body exceeds the limit of {limit} bytes (--max-request-mb {limits.max_request_mb:g})"
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise Refusal(413, too_large)
    request = Request(request.scope, _limited(request.receive, limit))
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if kind == "multipart/form-data":
            uploads = await _multipart(request, limits)
        elif kind == "application/json":
            uploads = _json_images(await request.body())
        elif kind.startswith("image/") or kind == "application/octet-stream":
            uploads = [("0", await request.body())]
        else:
            raise Refusal(
                415,
                f"unsupported content type {kind or '(none)'}: send multipart/form-data with 'image' file fields, "
                'JSON {"images": [base64, ...]}, or one image as the body (Content-Type: image/...)',
            )
    except _TooLarge:
        raise Refusal(413, too_large) from None
    except ClientDisconnect:
        raise Refusal(400, "the client disconnected before the body was complete") from None
    if not uploads:
        raise Refusal(400, "no image in the request")
    if len(uploads) > limits.max_images:
        raise Refusal(413, f"{len(uploads)} images in one request; at most {limits.max_images} (--max-images)")
    return uploads


async def _multipart(request: Request, limits: Limits) -> list[tuple[str, bytes]]:
    try:
        form = await request.form(max_files=limits.max_images, max_fields=limits.max_images + 16)
    except (MultiPartException, StarletteHTTPException) as exc:
        text = getattr(exc, "message", None) or getattr(exc, "detail", "") or str(exc)
        if "too many files" in text.lower():
            raise Refusal(413, f"more than {limits.max_images} images in one request (--max-images)") from None
        raise Refusal(400, f"malformed multipart body: {text}") from None
    try:
        fields = form.getlist("image")
        if not fields:
            got = ", ".join(sorted(set(form.keys()))) or "none"
            raise Refusal(400, f"no images: send each image as a multipart file field named 'image' (fields: {got})")
        uploads = []
        for i, field in enumerate(fields):
            if isinstance(field, str):
                raise Refusal(400, f"multipart field 'image' number {i + 1} is text, not a file")
            uploads.append((field.filename or str(i), await field.read()))
        return uploads
    finally:
        await form.close()


def _json_images(body: bytes) -> list[tuple[str, bytes | str]]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refusal(400, f"the body is not valid JSON ({exc})") from None
    items = doc.get("images") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise Refusal(400, 'a JSON body must be an object {"images": [<base64 image>, ...]}')
    uploads: list[tuple[str, bytes | str]] = []
    for i, item in enumerate(items):
        name, data = str(i), item
        if isinstance(item, dict):
            name, data = str(item.get("name", i)), item.get("data")
        if not isinstance(data, str):
            uploads.append((name, 'not a base64 string (an item is "<base64>" or {"name": ..., "data": "<base64>"})'))
            continue
        if data.startswith("data:") and "," in data:
            data = data.split(",", 1)[1]
        try:
            uploads.append((name, base64.b64decode("".join(data.split()), validate=True)))
        except (binascii.Error, ValueError) as exc:
            uploads.append((name, f"not valid base64 ({exc})"))
    return uploads


# -- the app ----------------------------------------------------------------------------------
def _check_key(request: Request, api_key: str | None) -> None:
    if api_key is None:
        return
    given = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if given is None and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if given is None:
        raise Refusal(401, "this server needs an API key: X-API-Key: KEY or Authorization: Bearer KEY", _BEARER)
    if not hmac.compare_digest(given.encode(), api_key.encode()):
        raise Refusal(401, "wrong API key", _BEARER)


_BEARER = {"WWW-Authenticate": "Bearer"}


async def _score(request: Request, service: ScoringService, state: dict) -> list[dict]:
    limits = service.limits
    if not service.alive:
        raise Refusal(503, f"the model thread stopped ({service.failure or 'shutting down'})")
    if state["in_flight"] >= limits.max_requests:
        raise Refusal(
            503,
            f"{limits.max_requests} requests are already being handled (--max-requests); retry later",
            {"Retry-After": str(service.retry_after())},
        )
    state["in_flight"] += 1
    try:
        uploads = await read_uploads(request, limits)
        good = [(name, data) for name, data in uploads if isinstance(data, bytes)]
        futures = service.submit(good) if good else []
        if futures is None:
            raise Refusal(
                503,
                f"the scoring queue is full ({service.pending} of {limits.max_queue} images admitted; --max-queue); "
                "retry later",
                {"Retry-After": str(service.retry_after())},
            )
        answers = iter(futures)
        rows = []
        for name, data in uploads:
            if isinstance(data, bytes):
                rows.append(await asyncio.wrap_future(next(answers)))
            else:
                rows.append({"name": name, "error": data})
        return rows
    finally:
        state["in_flight"] -= 1


def create_app(service: ScoringService, *, model: str = "model", api_key: str | None = None) -> FastAPI:
    """The ASGI app; the lifespan starts ``service`` and closes it at shutdown."""

    @asynccontextmanager
    async def lifespan(_app):
        service.start()
        yield
        await asyncio.to_thread(service.close)

    app = FastAPIOffline(
        title="deqa",
        version=__version__,
        description="Image-quality scores (DeQA-Score) from a trained deqa model. Guide: docs/serving.md.",
        lifespan=lifespan,
    )
    state = {"in_flight": 0}
    page = upload_page(model, api_key is not None)

    @app.exception_handler(Refusal)
    async def refused(_request, exc: Refusal):
        return JSONResponse({"error": exc.reason}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(page)

    @app.get("/health", summary="Liveness, the loaded model, limits and counters")
    async def health():
        body = {"model": model, "requests_in_flight": state["in_flight"], **service.health()}
        return JSONResponse(body, status_code=200 if service.alive else 503)

    @app.post(
        "/score",
        summary="Score images: score (1-5), std and the five level probabilities per image, in order",
        response_model=ScoreAnswer,
        responses=_REFUSALS,
        openapi_extra={"requestBody": _REQUEST_BODY},
    )
    async def score(request: Request):
        _check_key(request, api_key)
        rows = await _score(request, service, state)
        return JSONResponse({"model": model, "results": rows})

    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port); IPv6 for a host with ':'."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=2048)


def serve(app: FastAPI, host: str, port: int, access_log: bool = False, max_connections: int | None = None) -> None:
    """Run ``app`` with uvicorn on ``host:port`` until SIGINT/SIGTERM; logs the address it listens on.

    ``max_connections``: open connections (idle kept-alive ones included) beyond which uvicorn
    itself answers 503, an outer bound beside the app's own limits.
    """
    import uvicorn

    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    log.info("deqa serve: listening on http://%s:%d/ (API docs at /docs); Ctrl-C stops", shown, sock.getsockname()[1])
    if access_log:
        access = logging.getLogger("uvicorn.access")
        access.setLevel(logging.INFO)
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
        access.propagate = False
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=access_log,
        timeout_graceful_shutdown=10,
        limit_concurrency=max_connections,
        lifespan="on",
    )
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the handler it
    # found: this one notes it, so that a stopped server returns (exit 0) instead of dying by it
    stopped_by: list[str] = []
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda num, _frame: stopped_by.append(signal.Signals(num).name))
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("deqa serve: stopped%s", f" ({stopped_by[0]})" if stopped_by else "")
