"""The search HTTP API and web page (FastAPI), built around one ``Searcher``.

Endpoints: ``GET /search?q=&k=``, ``POST /search`` (multipart image, optional ``q``), ``POST /classify``
(image + labels), ``POST /embed`` (texts and/or an image -> vectors), ``GET /thumb/{id}``,
``GET /image/{id}``, ``GET /item/{id}``, ``GET /health``, ``/docs`` (OpenAPI), and the page at ``/``.

Safety: files are looked up by integer row id only, never by a client path, and served only while they
still hash to the indexed sha256 (``media.py``); request bodies above ``max_upload_bytes`` get 413 before
they are read (from ``Content-Length``, or by counting a chunked body); unreadable or non-image uploads
get a JSON 4xx; the model is shared by all requests behind a lock (``Searcher``). The page loads nothing
from outside the server (a Content-Security-Policy of ``'self'`` enforces it); ``/docs`` is FastAPI's
default page, which loads Swagger UI from a CDN.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Form, HTTPException, Query, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from ..errors import ImageError, KontrastError
from .media import THUMB_SIZES, MediaReader, StaleItemError
from .query import Searcher

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_K = 1000
MAX_ID = 2**62
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a chunked body passes the limit (FastAPI re-raises HTTPExceptions)."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"request body larger than {limit} bytes")


class UploadLimit:
    """ASGI middleware: 413 for bodies above ``max_bytes``, decided before the body is read; adds nosniff."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def _reject(self, send) -> None:
        body = json.dumps({"detail": f"request body larger than {self.max_bytes} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_bytes
            except ValueError:
                too_big = False
            if too_big:
                await self._reject(send)
                return
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def send_with_headers(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", []), (b"x-content-type-options", b"nosniff")]}
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except BodyTooLarge:
            if not started:
                await self._reject(send)


def _image_status(exc: ImageError) -> int:
    """415 for bytes that are not an image at all, 400 for a broken or oversized image."""
    return 415 if "not an image" in str(exc) else 400


def create_app(searcher: Searcher, max_upload_bytes: int = 10 * 1024 * 1024,
               thumb_cache_bytes: int = 64 * 1024 * 1024) -> FastAPI:
    """The FastAPI application serving ``searcher``'s index."""
    from .. import __version__

    app = FastAPI(title="kontrast search", version=__version__,
                  description="CLIP search over a kontrast index: text->image, image->image, captions, zero-shot.")
    media = MediaReader(thumb_cache_bytes)
    for name in ("image", "caption"):  # load the FAISS indexes now, not on the first request
        searcher.index.ann(name)
    store = searcher.index.store
    app.state.searcher = searcher
    app.state.media = media

    @app.exception_handler(ImageError)
    async def _image_error(_request, exc: ImageError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=_image_status(exc))

    @app.exception_handler(StaleItemError)
    async def _stale(_request, exc: StaleItemError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=410)

    @app.exception_handler(KontrastError)
    async def _user_error(_request, exc: KontrastError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    def _results(results) -> list[dict[str, Any]]:
        return [{**r.to_dict(), "thumb": f"/thumb/{r.id}", "image": f"/image/{r.id}"} for r in results]

    def _upload(file: UploadFile) -> bytes:
        data = file.file.read()
        if not data:
            raise HTTPException(status_code=400, detail=f"uploaded file {file.filename!r} is empty")
        return data

    def _row(item_id: int) -> dict[str, Any]:
        row = store.rows([item_id]).get(item_id)
        if row is None:
            raise HTTPException(status_code=404, detail=f"no item {item_id} in the index")
        return row

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Content-Security-Policy": PAGE_CSP})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/health", summary="liveness and index statistics")
    def health() -> dict[str, Any]:
        return {"status": "ok", **searcher.index.stats(), "max_upload_bytes": max_upload_bytes}

    @app.get("/search", summary="text -> image (or -> caption) search")
    def search_get(q: str = Query(..., min_length=1, max_length=2000, description="text query"),
                   k: int = Query(20, ge=1, le=MAX_K),
                   exclude: list[str] = Query([], description="drop results closer to these texts"),
                   exclude_threshold: float | None = Query(None, ge=-1, le=1),
                   captions: bool = Query(False, description="search captions instead of images")) -> dict[str, Any]:
        results = searcher.search(text=q, k=k, exclude=exclude, exclude_threshold=exclude_threshold, captions=captions)
        return {"query": q, "k": k, "results": _results(results)}

    @app.post("/search", summary="image -> image (or -> caption) search, optionally with text")
    def search_post(file: UploadFile = File(..., description="query image"),
                    q: str | None = Form(None, max_length=2000), k: int = Form(20, ge=1, le=MAX_K),
                    exclude: list[str] = Form([]), exclude_threshold: float | None = Form(None, ge=-1, le=1),
                    captions: bool = Form(False)) -> dict[str, Any]:
        data = _upload(file)
        results = searcher.search(text=q or None, image=data, k=k, exclude=exclude,
                                  exclude_threshold=exclude_threshold, captions=captions)
        return {"query": q, "k": k, "image": file.filename, "results": _results(results)}

    @app.post("/classify", summary="zero-shot classification of an uploaded image")
    def classify(file: UploadFile = File(...),
                 labels: list[str] = Form(..., description="labels: repeat the field, or one comma-separated value"),
                 template: str = Form("a photo of a {}.", max_length=500)) -> dict[str, Any]:
        data = _upload(file)
        names = [part.strip() for value in labels for part in value.split(",") if part.strip()]
        if len(names) > 1000:
            raise HTTPException(status_code=422, detail="at most 1000 labels")
        return {"labels": searcher.classify(data, names, template=template)}

    @app.post("/embed", summary="normalised embeddings of texts and/or an image")
    def embed(text: list[str] = Form([], description="texts (repeat the field for several)"),
              file: UploadFile | None = File(None, description="an image")) -> dict[str, Any]:
        if not text and file is None:
            raise HTTPException(status_code=422, detail="give a 'text' field and/or a 'file' upload")
        if len(text) > 256:
            raise HTTPException(status_code=422, detail="at most 256 texts per request")
        out: dict[str, Any] = {"model_fingerprint": searcher.index.model_fingerprint, "dim": searcher.index.dim}
        if text:
            out["text"] = searcher.encode_text(text).round(7).tolist()
        if file is not None:
            out["image"] = searcher.encode_image(_upload(file)).round(7).tolist()
        return out

    @app.get("/item/{item_id}", summary="metadata of one indexed item")
    def item(item_id: int = PathParam(..., ge=1, le=MAX_ID)) -> dict[str, Any]:
        row = _row(item_id)
        canon = row["alias_of"] or item_id
        return {**row, "aliases": store.aliases([canon]).get(canon, []), "thumb": f"/thumb/{item_id}",
                "image": f"/image/{item_id}"}

    @app.get("/thumb/{item_id}", summary="thumbnail of an indexed image (by id only)",
             response_class=Response, responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}})
    def thumb(item_id: int = PathParam(..., ge=1, le=MAX_ID), size: int = Query(256)) -> Response:
        if size not in THUMB_SIZES:
            raise HTTPException(status_code=422, detail=f"size must be one of {list(THUMB_SIZES)}")
        data, media_type = media.thumbnail(_row(item_id), size)
        return Response(data, media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/image/{item_id}", summary="the original indexed image (by id only)",
             response_class=Response, responses={200: {"content": {"image/*": {}}}})
    def image(item_id: int = PathParam(..., ge=1, le=MAX_ID)) -> Response:
        data, media_type = media.original(_row(item_id))
        return Response(data, media_type=media_type, headers={"Content-Disposition": "inline"})

    app.add_middleware(UploadLimit, max_bytes=max_upload_bytes)
    return app
