"""clip-retrieval's HTTP API on ``kontrast serve``: ``POST /knn-service``, ``POST /metadata``, ``GET /indices-list``,
and optionally its web front end under ``/clip-front/``, so ``ClipClient`` code and the clip-retrieval front
end work against kontrast indexes.

Formats follow clip-retrieval 2.45.0's back end (``clip_retrieval/clip_back.py``):

- Request bodies are JSON, read whatever the content type says (``ClipClient`` posts ``data=json.dumps(...)``
  with no JSON content type; the front end posts text/plain).
- ``/knn-service`` answers a list, best first, of up to ``num_result_ids`` results after deduplication; the
  first ``num_images`` carry the row's metadata (``caption``, ``url``, ``image_path``, the row's ``meta`` JSON
  fields and ``image``: the indexed file in base64 when it is still readable and unchanged, a 512-pixel
  picture of it instead when the file is larger than 1 MB), then
  ``id`` and ``similarity`` (the inner product with the query); the others carry only ``id`` and
  ``similarity`` (the front end fetches their metadata from ``/metadata`` while scrolling).
- ``deduplicate``: results whose (normalised) embeddings have inner product >= 0.94 with each other form
  connected components, of which only the best-ranked member is kept.
- ``modality``: "image" searches the image embeddings, "text" the caption embeddings.
- ``use_mclip``, ``use_safety_model``, ``use_violence_detector``, ``aesthetic_score``, ``aesthetic_weight`` are
  checked and accepted but change nothing: kontrast ships no multilingual text tower, no safety or violence
  classifier and no aesthetic embeddings (README, "clip-retrieval back end").

Every field is validated; a mistake gets a one-line ``detail`` (400 for a body that is not a JSON object,
404 for an unknown ``indice_name``, 422 for a bad field, 415/400 for an unreadable image).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from ..errors import KontrastError
from .fetch import FetchError, UrlFetcher
from .media import MediaReader, StaleItemError
from .query import Searcher

DEDUP_THRESHOLD = 0.94
MAX_TEXT = 2000
MAX_METADATA_IDS = 1000
_DATA_URL = re.compile(r"^data:[\w/+.-]*;base64,", re.ASCII)


class FieldError(HTTPException):
    """A request field with a wrong type or value (422, one line)."""

    def __init__(self, detail: str, status: int = 422) -> None:
        super().__init__(status_code=status, detail=detail)


@dataclass
class KnnQuery:
    """A validated ``/knn-service`` request."""

    index: str
    modality: str  # "image" or "text": which embeddings of the index are searched
    num_images: int  # results that carry metadata
    num_result_ids: int  # results returned (ids and similarities)
    deduplicate: bool
    text: str | None = None
    image: bytes | None = None
    image_url: str | None = None
    embedding: np.ndarray | None = None


# --------------------------------------------------------------------------------------------- parsing
def read_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, whatever the content type; ``FieldError`` (400) otherwise."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FieldError(f"the request body must be a JSON object ({type(exc).__name__}: {exc})", 400) from None
    if not isinstance(data, dict):
        raise FieldError(f"the request body must be a JSON object, not {type(data).__name__}", 400)
    return data


def _bool(data: Mapping[str, Any], key: str, default: bool) -> bool:
    value = data.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise FieldError(f"field {key!r} must be true or false, not {value!r}")
    return value


def _int(data: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = data.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(f"field {key!r} must be an integer, not {value!r}")
    if not low <= value <= high:
        raise FieldError(f"field {key!r} is {value}; this server accepts {low}..{high}")
    return value


def _number_or_blank(data: Mapping[str, Any], key: str, low: float, high: float, integer: bool) -> float | None:
    """clip-retrieval's front end sends these as strings, "" meaning unset."""
    value = data.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise FieldError(f"field {key!r} must be a number, not {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FieldError(f"field {key!r} must be a number, not {value!r}")
    if integer and value != int(value):
        raise FieldError(f"field {key!r} must be a whole number, not {value!r}")
    if not low <= value <= high:
        raise FieldError(f"field {key!r} is {value:g}; give {low:g}..{high:g}")
    return float(value)


def _text(data: Mapping[str, Any], key: str, max_len: int) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise FieldError(f"field {key!r} must be a string, not {type(value).__name__}")
    if len(value) > max_len:
        raise FieldError(f"field {key!r} has {len(value)} characters; at most {max_len}")
    return value


def index_name(data: Mapping[str, Any], names: list[str]) -> str:
    """``indice_name`` (default: the first index); ``FieldError`` 404 naming the indexes served."""
    name = data.get("indice_name")
    if name is None or name == "":
        return names[0]
    if not isinstance(name, str) or name not in names:
        raise FieldError(f"unknown indice_name {name!r}; this server has: {', '.join(names)}", 404)
    return name


def decode_base64_image(value: str) -> bytes:
    """Bytes of a base64 image (a ``data:...;base64,`` prefix and whitespace allowed); ``FieldError`` if invalid."""
    value = _DATA_URL.sub("", value.strip(), count=1)
    try:
        data = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FieldError(f"field 'image' is not valid base64 ({exc})") from None
    if not data:
        raise FieldError("field 'image' is empty")
    return data


def parse_knn(data: Mapping[str, Any], names: list[str], dims: Mapping[str, int], max_images: int,
              max_results: int) -> KnnQuery:
    """Validate a ``/knn-service`` body (see the module docstring); ``FieldError`` on the first bad field."""
    name = index_name(data, names)
    modality = data.get("modality", "image")
    if modality not in ("image", "text"):
        raise FieldError(f"field 'modality' must be \"image\" or \"text\", not {modality!r}")
    num_images = _int(data, "num_images", 40, 1, max_images)
    num_result_ids = _int(data, "num_result_ids", num_images, 1, max_results)
    query = KnnQuery(name, modality, num_images, num_result_ids, _bool(data, "deduplicate", False))
    for key in ("use_mclip", "use_safety_model", "use_violence_detector"):
        _bool(data, key, False)  # accepted, no effect (module docstring)
    _number_or_blank(data, "aesthetic_score", 0, 9, integer=True)
    _number_or_blank(data, "aesthetic_weight", -1e6, 1e6, integer=False)
    query.text = _text(data, "text", MAX_TEXT)
    image = _text(data, "image", 1 << 40)  # the body size is capped by the guard
    query.image_url = _text(data, "image_url", 4096)
    embedding = data.get("embedding_input")
    given = [k for k, v in (("text", query.text), ("image", image), ("image_url", query.image_url),
                            ("embedding_input", embedding)) if v is not None]
    if not given:
        raise FieldError("give one of 'text', 'image' (base64), 'image_url' or 'embedding_input'")
    if len(given) > 1:
        raise FieldError(f"give only one of 'text', 'image', 'image_url', 'embedding_input' (got {', '.join(given)})")
    if image is not None:
        query.image = decode_base64_image(image)
    if embedding is not None:
        dim = dims[name]
        if not isinstance(embedding, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                      for x in embedding):
            raise FieldError("field 'embedding_input' must be a list of numbers")
        if len(embedding) != dim:
            raise FieldError(f"field 'embedding_input' has {len(embedding)} numbers; index {name!r} holds "
                             f"{dim}-dimensional embeddings")
        vec = np.asarray(embedding, dtype=np.float32)
        if not np.isfinite(vec).all():
            raise FieldError("field 'embedding_input' holds a number too large for float32, NaN or infinity")
        query.embedding = vec
    return query


# ------------------------------------------------------------------------------------------ dedupe
def duplicate_positions(embeddings: np.ndarray, threshold: float = DEDUP_THRESHOLD, block: int = 1024) -> set[int]:
    """Positions to drop from ranked results ``embeddings`` [n, D]: link every pair whose normalised embeddings
    have inner product >= ``threshold``, and keep only the first (best-ranked) member of each connected
    component (what clip-retrieval's back end does with a FAISS range search).

    Vectorised, without a loop over pairs (n near-identical results link n^2 / 2 pairs): the links are kept as
    a bit matrix ([n, n] bits, built ``block`` rows at a time), and every position takes the smallest label
    among its neighbours, then its label's label, until nothing changes; each component ends labelled with its
    smallest position."""
    n = len(embeddings)
    if n < 2:
        return set()
    vecs = np.asarray(embeddings, dtype=np.float32)
    vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    blocks = []
    for start in range(0, n, block):
        links = (vecs[start: start + block] @ vecs.T) >= threshold  # [b, n]
        blocks.append((start, np.packbits(links, axis=1)))  # [b, n] bool -> [b, ceil(n / 8)] uint8
    labels = np.arange(n)
    while True:
        new = labels.copy()
        for start, packed in blocks:
            links = np.unpackbits(packed, axis=1, count=n).astype(bool)  # [b, ceil(n / 8)] -> [b, n]
            smallest = np.where(links, labels[None, :], n).min(axis=1)  # [b]
            new[start: start + len(smallest)] = np.minimum(new[start: start + len(smallest)], smallest)
        while True:  # pointer jumping: a label's label is in the same component
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, labels):
            return {int(i) for i in np.nonzero(labels != np.arange(n))[0]}
        labels = new


# ---------------------------------------------------------------------------------------- metadata
class InlineImages:
    """The ``image`` field of a result: the indexed file's bytes in base64 when the file is at most
    ``max_bytes`` (1 MB by default), else a JPEG (PNG when transparent) of at most ``THUMB_SIDE`` pixels a side,
    so that a response of ``num_images`` results stays bounded; None when the file is gone or changed."""

    THUMB_SIDE = 512

    def __init__(self, media: MediaReader, max_bytes: int = 1 << 20) -> None:
        self.media, self.max_bytes = media, max_bytes

    def get(self, row: Mapping[str, Any]) -> str | None:
        try:
            data, _ = self.media.original(dict(row))
            if len(data) > self.max_bytes:
                data, _ = self.media.thumbnail(dict(row), self.THUMB_SIDE)
        except StaleItemError:
            return None
        return base64.b64encode(data).decode("ascii")


def row_metadata(row: Mapping[str, Any], images: InlineImages | None) -> dict[str, Any]:
    """clip-retrieval metadata of one index row: caption, url, image_path, the row's ``meta`` fields, and
    ``image`` (``InlineImages``; only when the file is still there with the indexed sha256: never for rows
    imported from embeddings, whose files were not read)."""
    meta = row.get("meta") or {}
    out: dict[str, Any] = {}
    caption = row.get("caption") if row.get("caption") is not None else meta.get("caption")
    if caption is not None:
        out["caption"] = caption
    if meta.get("url"):
        out["url"] = meta["url"]
    image_path = meta.get("image_path") or row.get("path")
    origin = row.get("origin") or ""
    if image_path and row.get("kind") == "embeddings" and image_path.startswith(origin + ":") \
            and image_path[len(origin) + 1:].isdigit():
        image_path = None  # "<shard>:<row>": a row imported without an image_path (import_embeddings.py)
    if image_path:
        out["image_path"] = image_path
    for key, value in meta.items():
        out.setdefault(key, value)
    if images is not None and row.get("path") and row.get("sha256"):
        image = images.get(row)
        if image is not None:
            out["image"] = image
    return out


# ------------------------------------------------------------------------------------------- search
def knn(searcher: Searcher, query: KnnQuery, fetcher: UrlFetcher | None, images: InlineImages | None) -> list[dict]:
    """Run a validated query: results as clip-retrieval's back end returns them."""
    index = searcher.index
    name, column = ("image", "image_vec") if query.modality == "image" else ("caption", "text_vec")
    if index.ann(name) is None:
        what = "image" if name == "image" else "caption (text)"
        raise FieldError(f"index {query.index!r} holds no {what} embeddings; use modality "
                         f"{'text' if name == 'image' else 'image'}")
    if query.text is not None:
        vec = searcher.encode_text([query.text])[0]
    elif query.image is not None:
        vec = searcher.encode_image(query.image, "image")
    elif query.image_url is not None:
        if fetcher is None:
            raise FetchError("this server does not fetch image URLs (start it with --allow-image-urls HOST)")
        vec = searcher.encode_image(fetcher.fetch(query.image_url), "image_url")
    else:
        vec = query.embedding
    scores, ids = index.search(np.asarray(vec, dtype=np.float32), query.num_result_ids, name)
    hits = [(int(i), float(s)) for s, i in zip(scores[0], ids[0]) if i >= 0]
    rows = index.store.rows([i for i, _ in hits])
    hits = [(i, s) for i, s in hits if i in rows]  # an HNSW index may still hold removed ids
    if query.deduplicate and len(hits) > 1:
        stored = index.store.vectors([i for i, _ in hits], column, index.dim)
        keep = [h for h in hits if h[0] in stored]
        drop = duplicate_positions(np.stack([stored[i] for i, _ in keep])) if len(keep) > 1 else set()
        dropped = {keep[p][0] for p in drop}
        hits = [h for h in hits if h[0] not in dropped]
    out = []
    for rank, (i, score) in enumerate(hits):
        item = row_metadata(rows[i], images) if rank < query.num_images else {}
        item["id"] = i
        item["similarity"] = score
        out.append(item)
    return out


def metadata(searcher: Searcher, ids: list[int], images: InlineImages | None) -> list[dict[str, Any]]:
    """``[{id, metadata}]`` in the order asked; an id not in the index gets empty metadata."""
    rows = searcher.index.store.rows(ids)
    return [{"id": i, "metadata": row_metadata(rows[i], images) if i in rows else {}} for i in ids]


# --------------------------------------------------------------------------------------------- routes
def add_routes(app: FastAPI, searchers: Mapping[str, Searcher], media: Mapping[str, MediaReader],
               fetcher: UrlFetcher | None, max_images: int = 1000, max_results: int = 10000,
               inline_max_bytes: int = 1 << 20) -> None:
    """Register ``/knn-service``, ``/metadata`` and ``/indices-list`` on ``app`` for the named ``searchers``
    (``inline_max_bytes``: larger files are sent as a 512-pixel picture, see ``InlineImages``)."""
    names = list(searchers)
    images = {name: InlineImages(m, inline_max_bytes) for name, m in media.items()}
    dims = {name: s.index.dim for name, s in searchers.items()}

    @app.exception_handler(FetchError)
    async def _fetch_error(_request, exc: FetchError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.get("/indices-list", summary="clip-retrieval: names of the indexes served")
    def indices_list() -> list[str]:
        return names

    @app.post("/knn-service", summary="clip-retrieval: nearest neighbours of a text, image, image URL or embedding")
    async def knn_service(request: Request) -> JSONResponse:
        query = parse_knn(read_json_object(await request.body()), names, dims, max_images, max_results)
        results = await run_in_threadpool(knn, searchers[query.index], query, fetcher, images.get(query.index))
        return JSONResponse(results)

    @app.post("/metadata", summary="clip-retrieval: metadata of result ids")
    async def metadata_service(request: Request) -> JSONResponse:
        data = read_json_object(await request.body())
        name = index_name(data, names)
        ids = data.get("ids")
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 2**62
                                                for i in ids):
            raise FieldError("field 'ids' must be a list of integer ids (0 <= id < 2**62)")
        if len(ids) > MAX_METADATA_IDS:
            raise FieldError(f"field 'ids' has {len(ids)} ids; at most {MAX_METADATA_IDS} per request")
        return JSONResponse(await run_in_threadpool(metadata, searchers[name], ids, images.get(name)))


# ---------------------------------------------------------------------------------------- front end
def front_build_dir() -> Path:
    """The clip-retrieval package's built web front end (``front/build``); ``KontrastError`` when not installed."""
    from importlib import metadata as importlib_metadata

    hint = "install it with: pip install --no-deps clip-retrieval==2.45.0"
    try:
        dist = importlib_metadata.distribution("clip-retrieval")
    except importlib_metadata.PackageNotFoundError:
        raise KontrastError(f"--clip-front needs the clip-retrieval package's web front end; {hint}") from None
    for file in dist.files or []:
        if file.as_posix().endswith("front/build/index.html"):
            folder = Path(str(dist.locate_file(file))).parent
            if folder.is_dir():
                return folder
    raise KontrastError(f"the installed clip-retrieval {dist.version} has no front/build/index.html; {hint}")


def add_front(app: FastAPI, folder: Path, default_index: str, prefix: str = "/clip-front") -> None:
    """Serve the front end's files under ``prefix``/ with a ``config.json`` whose back end is this server."""
    from fastapi.staticfiles import StaticFiles

    @app.get(f"{prefix}/config.json", include_in_schema=False)
    def front_config(request: Request) -> dict[str, str]:
        base = str(request.base_url).rstrip("/")  # the Host the browser used (checked by the guard)
        return {"defaultBackend": base, "defaultIndex": default_index, "urlColumn": "url"}

    app.mount(prefix, StaticFiles(directory=folder, html=True), name="clip-front")
