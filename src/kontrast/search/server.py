"""The search HTTP API and web page (FastAPI), built around one ``Searcher``.

Endpoints: ``GET /search?q=&k=``, ``POST /search`` (multipart image, optional ``q``), ``POST /classify``
(image + labels + templates), ``POST /embed`` (texts and/or an image -> vectors), ``GET /thumb/{id}``,
``GET /image/{id}``, ``GET /locate/{id}?q=`` (a heatmap of where ``q`` is in the image), ``GET /item/{id}``,
``GET /health``, ``/docs`` (OpenAPI), and the page at ``/``; clip-retrieval's ``/knn-service``, ``/metadata`` and
``/indices-list`` (``clip_retrieval_api.py``), and its web front end under ``/clip-front/`` when asked.

Several named indexes can be served at once (``create_app({"a": searcher_a, "b": searcher_b})``): the
clip-retrieval routes pick one by ``indice_name``, kontrast's own routes by an optional ``?index=NAME``
(default: the first).

Safety (README, "Security"): every request first passes ``guard.RequestGuard`` (URL length 414, ``Host``
header 400, access token 401, body size 413 before the body is read). Files are looked up by integer row id
only, never by a client path, and served only while they still hash to the indexed sha256 (``media.py``).
Uploads are decoded at most ``max_decodes`` at a time and at most ``max_image_pixels`` each
(``decode.DecodeGate``); unreadable or non-image uploads get a JSON 4xx; a form field given twice is
refused; templates are data (only ``{}`` is replaced); labels x templates per request are capped. The model
is shared by all requests behind a lock (``Searcher``). The index is followed: a new generation written by
``kontrast index`` is loaded in the background and swapped in at once (``SearchIndex.follow``). The page
loads nothing from outside the server (a Content-Security-Policy of ``'self'`` enforces it); ``/docs`` is
FastAPI's default page, which loads Swagger UI from a CDN. No CORS headers are sent unless origins are
listed (``cors_origins``; Starlette's ``CORSMiddleware`` outside the guard, so the guard's own errors carry
them and a preflight, which browsers send without credentials, needs no token; every other request still
passes the guard); other origins' pages cannot read responses.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from ..errors import ImageError, KontrastError
from .decode import DEFAULT_MAX_CONCURRENT, DEFAULT_MAX_PIXELS, DecodeGate
from .guard import LOOPBACK_NAMES, RequestGuard
from .media import THUMB_SIZES, LRUBytes, MediaReader, StaleItemError
from .query import Searcher

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_K = 1000
MAX_ID = 2**62
INDEX_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
IndexParam = Annotated[str | None, Query(max_length=100, description="index name (default: the first)")]
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


@dataclass
class ServerOptions:
    """What the server accepts; ``kontrast serve`` fills it from its flags."""

    max_upload_bytes: int = 10 * 1024 * 1024  # request bodies above: 413 before reading
    thumb_cache_bytes: int = 64 * 1024 * 1024  # LRU of rendered thumbnails
    max_url_bytes: int = 32 * 1024  # longer URLs: 414
    allowed_hosts: tuple[str, ...] | None = LOOPBACK_NAMES  # Host header names answered (None: any)
    auth_token: str | None = None  # required on every request when set
    max_decodes: int = DEFAULT_MAX_CONCURRENT  # image decodes at once (uploads and thumbnails)
    max_image_pixels: int = DEFAULT_MAX_PIXELS  # per decoded upload (JPEGs above are decoded at 1/2..1/8)
    max_prompts: int = 1000  # labels x templates per /classify request
    max_texts: int = 256  # texts per /embed request
    follow_seconds: float | None = 1.0  # check the index for a new generation this often (None: never)
    cors_origins: tuple[str, ...] = ()  # origins whose pages may read responses (none: no CORS headers)
    image_url_hosts: tuple[str, ...] = ()  # hosts /knn-service may fetch an image_url from (none: no fetching)
    knn_max_images: int = 1000  # /knn-service num_images cap (results that carry metadata and images)
    knn_max_results: int = 10000  # /knn-service num_result_ids cap
    knn_inline_max_bytes: int = 1 << 20  # larger indexed files are inlined as a 512-pixel picture
    clip_front: str | None = None  # clip-retrieval's front/build folder, served under /clip-front/


def _image_status(exc: ImageError) -> int:
    """415 for bytes that are not an image at all, 400 for a broken or oversized image."""
    return 415 if "not an image" in str(exc) else 400


def _check_exclude(exclude: list[str]) -> None:
    if len(exclude) > 16 or any(len(e) > 2000 for e in exclude):
        raise HTTPException(status_code=422, detail="at most 16 exclude texts of at most 2000 characters")


def _single(*fields: str):
    """A dependency refusing a form in which one of ``fields`` appears more than once (which would
    otherwise silently use the last one)."""

    async def check(request: Request) -> None:
        if not request.headers.get("content-type", "").startswith(("multipart/form-data",
                                                                    "application/x-www-form-urlencoded")):
            return
        form = await request.form()  # parsed once; FastAPI reads the same cached form
        for name in fields:
            n = len(form.getlist(name))
            if n > 1:
                raise HTTPException(status_code=400, detail=f"form field {name!r} given {n} times; send it once")

    return Depends(check)


def default_index_name(folder: str | Path) -> str:
    """An index's name in ``/indices-list`` when none is given: its folder's name."""
    return Path(folder).resolve().name


def create_app(searcher: Searcher | Mapping[str, Searcher], options: ServerOptions | None = None,
               **changes: Any) -> FastAPI:
    """The FastAPI application serving ``searcher``'s index, or several named ones (the first is the default of
    kontrast's own routes); ``changes``: fields of ``ServerOptions``."""
    from .. import __version__
    from . import clip_retrieval_api
    from .fetch import UrlFetcher

    opts = replace(options or ServerOptions(), **changes)
    searchers = dict(searcher) if isinstance(searcher, Mapping) else {default_index_name(searcher.index.folder): searcher}
    if not searchers:
        raise ValueError("create_app needs at least one index")
    for name in searchers:
        if not INDEX_NAME_RE.match(name):
            raise KontrastError(f"index name {name!r}: use 1-100 of A-Z a-z 0-9 . _ - (starting with a letter or digit)")
    app = FastAPI(title="kontrast search", version=__version__,
                  description="CLIP search over a kontrast index: text->image, image->image, captions, zero-shot.")
    gate = DecodeGate(opts.max_decodes, opts.max_image_pixels)
    medias: dict[str, MediaReader] = {}
    for name, s in searchers.items():
        s.gate = gate
        medias[name] = MediaReader(opts.thumb_cache_bytes // len(searchers), gate=gate, index_folder=str(s.index.folder))
        for column in ("image", "caption"):  # load the FAISS indexes now, not on the first request
            s.index.ann(column)
        if opts.follow_seconds is not None and s.index.readonly:
            s.index.follow(opts.follow_seconds)
    default = next(iter(searchers))
    searcher = searchers[default]
    app.state.searcher = searcher
    app.state.searchers = searchers
    app.state.media = medias[default]
    app.state.options = opts

    def _pick(index: str | None) -> tuple[str, Searcher, MediaReader]:
        name = index or default
        if name not in searchers:
            raise HTTPException(status_code=404, detail=f"no index named {name!r}; this server has: "
                                f"{', '.join(searchers)}")
        return name, searchers[name], medias[name]

    @app.exception_handler(ImageError)
    async def _image_error(_request, exc: ImageError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=_image_status(exc))

    @app.exception_handler(StaleItemError)
    async def _stale(_request, exc: StaleItemError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=410)

    @app.exception_handler(KontrastError)
    async def _user_error(_request, exc: KontrastError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    def _results(results, name: str) -> list[dict[str, Any]]:
        suffix = "" if name == default else f"?index={name}"
        return [{**r.to_dict(), "thumb": f"/thumb/{r.id}{suffix}", "image": f"/image/{r.id}{suffix}"} for r in results]

    def _upload(file: UploadFile):
        """The upload's spooled file (read inside a decode slot, not here)."""
        if not file.size:
            raise HTTPException(status_code=400, detail=f"uploaded file {file.filename!r} is empty")
        return file.file

    def _row(item_id: int, s: Searcher) -> dict[str, Any]:
        row = s.index.store.rows([item_id]).get(item_id)
        if row is None:
            raise HTTPException(status_code=404, detail=f"no item {item_id} in the index")
        return row

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Content-Security-Policy": PAGE_CSP})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/health", summary="liveness and index statistics")
    def health(index: IndexParam = None) -> dict[str, Any]:
        _, s, _ = _pick(index)
        return {"status": "ok", **s.index.stats(), "max_upload_bytes": opts.max_upload_bytes,
                "max_image_pixels": opts.max_image_pixels, "indexes": list(searchers)}

    @app.get("/search", summary="text -> image (or -> caption) search")
    def search_get(q: Annotated[str, Query(min_length=1, max_length=2000, description="text query")],
                   k: Annotated[int, Query(ge=1, le=MAX_K)] = 20,
                   exclude: Annotated[list[str] | None, Query(description="drop results closer to these texts")] = None,
                   exclude_threshold: Annotated[float | None, Query(ge=-1, le=1)] = None,
                   captions: Annotated[bool, Query(description="search captions instead of images")] = False,
                   index: IndexParam = None) -> dict[str, Any]:
        exclude = exclude or []
        _check_exclude(exclude)
        name, s, _ = _pick(index)
        results = s.search(text=q, k=k, exclude=exclude, exclude_threshold=exclude_threshold, captions=captions)
        return {"query": q, "k": k, "results": _results(results, name)}

    @app.post("/search", summary="image -> image (or -> caption) search, optionally with text",
              dependencies=[_single("file", "q", "k", "exclude_threshold", "captions")])
    def search_post(file: Annotated[UploadFile, File(description="query image")],
                    q: Annotated[str | None, Form(max_length=2000)] = None,
                    k: Annotated[int, Form(ge=1, le=MAX_K)] = 20,
                    exclude: Annotated[list[str] | None, Form()] = None,
                    exclude_threshold: Annotated[float | None, Form(ge=-1, le=1)] = None,
                    captions: Annotated[bool, Form()] = False, index: IndexParam = None) -> dict[str, Any]:
        exclude = exclude or []
        _check_exclude(exclude)
        name, s, _ = _pick(index)
        results = s.search(text=q or None, image=_upload(file), k=k, exclude=exclude,
                           exclude_threshold=exclude_threshold, captions=captions, name=file.filename or "upload")
        return {"query": q, "k": k, "image": file.filename, "results": _results(results, name)}

    @app.post("/classify", summary="zero-shot classification of an uploaded image",
              dependencies=[_single("file")])
    def classify(file: Annotated[UploadFile, File()],
                 labels: Annotated[list[str], Form(description="labels: repeat the field, or one comma-separated value")],
                 template: Annotated[list[str] | None, Form(description="prompt templates ('{}' = the label; repeat "
                                                            "the field for an ensemble)")] = None,
                 index: IndexParam = None) -> dict[str, Any]:
        _, searcher, _ = _pick(index)  # the model of that index
        template = template or ["a photo of a {}."]
        names = [part.strip() for value in labels for part in value.split(",") if part.strip()]
        if any(len(t) > 500 for t in template):
            raise HTTPException(status_code=422, detail="a template is longer than 500 characters")
        if any(len(n) > 500 for n in names):
            raise HTTPException(status_code=422, detail="a label is longer than 500 characters")
        return {"labels": searcher.classify(_upload(file), names, template=template, max_prompts=opts.max_prompts,
                                            name=file.filename or "upload")}

    @app.post("/embed", summary="normalised embeddings of texts and/or an image", dependencies=[_single("file")])
    def embed(text: Annotated[list[str] | None, Form(description="texts (repeat the field for several)")] = None,
              file: Annotated[UploadFile | None, File(description="an image")] = None,
              index: IndexParam = None) -> dict[str, Any]:
        _, searcher, _ = _pick(index)  # the model of that index
        text = text or []
        if not text and file is None:
            raise HTTPException(status_code=422, detail="give a 'text' field and/or a 'file' upload")
        if len(text) > opts.max_texts:
            raise HTTPException(status_code=422, detail=f"at most {opts.max_texts} texts per request")
        out: dict[str, Any] = {"model_fingerprint": searcher.index.model_fingerprint, "dim": searcher.index.dim}
        if text:
            out["text"] = searcher.encode_text(text).round(7).tolist()
        if file is not None:
            out["image"] = searcher.encode_image(_upload(file), file.filename or "upload").round(7).tolist()
        return out

    @app.get("/item/{item_id}", summary="metadata of one indexed item")
    def item(item_id: Annotated[int, PathParam(ge=1, le=MAX_ID)], index: IndexParam = None) -> dict[str, Any]:
        name, s, _ = _pick(index)
        row = _row(item_id, s)
        canon = row["alias_of"] or item_id
        suffix = "" if name == default else f"?index={name}"
        return {**row, "aliases": s.index.store.aliases([canon]).get(canon, []), "thumb": f"/thumb/{item_id}{suffix}",
                "image": f"/image/{item_id}{suffix}"}

    @app.get("/thumb/{item_id}", summary="thumbnail of an indexed image (by id only)",
             response_class=Response, responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}})
    def thumb(item_id: Annotated[int, PathParam(ge=1, le=MAX_ID)], size: int = 256, index: IndexParam = None) -> Response:
        if size not in THUMB_SIZES:
            raise HTTPException(status_code=422, detail=f"size must be one of {list(THUMB_SIZES)}")
        _, s, media = _pick(index)
        data, media_type = media.thumbnail(_row(item_id, s), size)
        return Response(data, media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/image/{item_id}", summary="the original indexed image (by id only)",
             response_class=Response, responses={200: {"content": {"image/*": {}}}})
    def image(item_id: Annotated[int, PathParam(ge=1, le=MAX_ID)], index: IndexParam = None) -> Response:
        _, s, media = _pick(index)
        data, media_type = media.original(_row(item_id, s))
        return Response(data, media_type=media_type, headers={"Content-Disposition": "inline"})

    overlays = LRUBytes(opts.thumb_cache_bytes // 4)  # rendered /locate pictures

    @app.get("/locate/{item_id}", summary="where a text is in an indexed image: a heatmap overlay (PNG)",
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def locate_overlay(item_id: Annotated[int, PathParam(ge=1, le=MAX_ID)],
                       q: Annotated[str, Query(min_length=1, max_length=500, description="text to locate")],
                       method: Annotated[str, Query(pattern="^(clearclip|maskclip|tokens|crops)$")] = "clearclip",
                       size: int = 512, index: IndexParam = None) -> Response:
        if size not in THUMB_SIZES:
            raise HTTPException(status_code=422, detail=f"size must be one of {list(THUMB_SIZES)}")
        name, searcher, media = _pick(index)
        row = _row(item_id, searcher)
        key = (name, item_id, row["sha256"], q, method, size)
        hit = overlays.get(key)
        if hit is None:
            from ..locate.render import overlay_for

            data, _ = media.original(row)
            img, loc = searcher.locate(data, [q], method=method, name=f"item {item_id}")
            picture = overlay_for(img, loc.heat(0, 0), loc.regions[0], max_side=size)
            buf = io.BytesIO()
            picture.save(buf, format="PNG")
            hit = (buf.getvalue(), "image/png")
            overlays.put(key, hit)
        return Response(hit[0], media_type=hit[1], headers={"Cache-Control": "private, max-age=3600"})

    fetcher = UrlFetcher(opts.image_url_hosts) if opts.image_url_hosts else None
    clip_retrieval_api.add_routes(app, searchers, medias, fetcher, opts.knn_max_images, opts.knn_max_results,
                                  opts.knn_inline_max_bytes)
    if opts.clip_front:
        clip_retrieval_api.add_front(app, Path(opts.clip_front), default)
    app.add_middleware(RequestGuard, max_bytes=opts.max_upload_bytes, max_url_bytes=opts.max_url_bytes,
                       allowed_hosts=opts.allowed_hosts, token=opts.auth_token)
    if opts.cors_origins:  # added last: outermost, so the guard's refusals carry the CORS headers too
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(opts.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
    return app


def uvicorn_config(app: FastAPI, max_connections: int = 128, **kwargs: Any):
    """The ``uvicorn.Config`` ``kontrast serve`` runs ``app`` with (tests use the same).

    h11's request-head buffer is raised from 16 KB to 2 MB so that a long URL reaches ``RequestGuard``
    and gets 414 instead of a connection reset; ``max_connections`` (uvicorn's ``limit_concurrency``:
    503 above it) bounds the memory those buffers and the upload spools can take.
    """
    import uvicorn

    kwargs.setdefault("log_level", "warning")
    return uvicorn.Config(app, h11_max_incomplete_event_size=2 * 1024 * 1024, limit_concurrency=max_connections,
                          **kwargs)
