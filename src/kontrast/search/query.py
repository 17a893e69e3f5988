"""Queries against a search index: text->image, image->image, captions (->text), exclusion, zero-shot labels.

A query may have a text, an image, or both; the query vector is then the normalised mean of their
normalised embeddings. ``captions=True`` searches the caption embeddings instead of the image
embeddings (image->text with an image query, text->text with a text query).

``exclude``: a zero-shot filter on each result's *image* embedding ``v``. With ``exclude_threshold=T``, a
result is dropped when ``max_j cos(v, exclude_j) > T``. Without a threshold, a result is dropped when it is
closer to an excluded text than to the query text (``max_j cos(v, exclude_j) > cos(v, query_text)``), the
two-class zero-shot decision; an image-only query has no text to compare with and needs a threshold.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import KontrastError
from .decode import DecodeGate
from .index import SearchIndex


@dataclass
class SearchResult:
    rank: int
    score: float
    id: int
    path: str
    width: int | None
    height: int | None
    caption: str | None
    size: int | None = None
    sha256: str | None = None
    kind: str | None = None
    aliases: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Searcher:
    """One model and one index; thread-safe (model calls are serialised by a lock, FAISS reads are shared)."""

    def __init__(self, index: SearchIndex, model: torch.nn.Module, preprocess: Callable, tokenizer: Callable,
                 spec: str, lock: bool = True, gate: DecodeGate | None = None) -> None:
        from ..record import fingerprint

        index.check_model(fingerprint(model), spec)
        self.index, self.model, self.preprocess, self.tokenizer = index, model, preprocess, tokenizer
        self.spec = spec
        self.gate = gate  # bounds concurrent decodes and pixels (the server sets one; see decode.py)
        self.model.eval()
        self._lock = threading.Lock() if lock else None
        self._device = next(model.parameters()).device
        self._dtype = next(model.visual.parameters()).dtype

    @classmethod
    def open(cls, folder: str, model: str | None = None, pretrained: str | None = None, device: str = "cpu",
             precision: str = "fp32", lock: bool = True, backend: str = "torch") -> Searcher:
        """Open an index with its own model (``model=None``: the spec recorded when it was built)."""
        from ..api import load

        index = SearchIndex(folder)
        spec = model or index.model_spec
        if not spec:
            raise KontrastError(f"index {folder} records no model; pass --model")
        if model is None and pretrained is None:  # the recorded model: with its recorded pretrained tag, if any
            pretrained = index.store.get_info("model_pretrained")
        m, preprocess, tokenizer = load(spec, pretrained=pretrained, device=device, precision=precision, backend=backend)
        return cls(index, m, preprocess, tokenizer, spec, lock=lock)

    def with_index(self, index: SearchIndex) -> Searcher:
        """A searcher over another index built with the same model, sharing this one's model, lock and gate."""
        index.check_model(self.index.model_fingerprint, self.spec)
        other = copy.copy(self)
        other.index = index
        return other

    def _model_lock(self):
        return self._lock if self._lock is not None else contextlib.nullcontext()

    # ------------------------------------------------------------------------------------- encoding
    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Normalised text embeddings [n, D] (float32)."""
        ids = self.tokenizer(list(texts))
        with self._model_lock(), torch.inference_mode():
            out = self.model.encode_text(ids.to(self._device), normalize=True)
        return out.float().cpu().numpy()

    def pixels(self, image: Any, name: str = "upload") -> torch.Tensor:
        """Preprocessed ``[3, H, W]`` pixels of one image (path, bytes, binary file or PIL image).

        With a ``gate``, the image is decoded under its pixel cap, large ones one slot at a time.
        """
        from ..preprocess import load_image

        if self.gate is None or isinstance(image, Image.Image):
            if hasattr(image, "read"):
                image.seek(0)
                image = image.read()
            return self.preprocess(load_image(image))
        with self.gate.decoded(image, name) as img:
            return self.preprocess(img)

    def encode_image(self, image: Any, name: str = "upload") -> np.ndarray:
        """Normalised embedding [D] of one image (path, bytes, binary file or PIL image); ``ImageError`` if unreadable."""
        pixels = self.pixels(image, name)
        x = pixels.unsqueeze(0).to(device=self._device, dtype=self._dtype)  # [3, H, W] -> [1, 3, H, W]
        with self._model_lock(), torch.inference_mode():
            out = self.model.encode_image(x, normalize=True)
        return out.float().cpu().numpy()[0]

    def locate(self, image: Any, texts: Sequence[str], method: str | None = None, size: int | None = None,
               name: str = "image") -> tuple[Image.Image, Any]:
        """``(RGB image, kontrast.locate.Localisation)``: where each text is in one image (path, bytes or PIL image),
        decoded under the gate's limits like an upload; ``size`` defaults to twice the model's image size."""
        from ..locate import locate
        from ..models.dense import DEFAULT_METHOD
        from ..preprocess import load_image

        if not hasattr(self.model, "visual"):
            raise KontrastError("localisation needs the PyTorch image tower; this server runs another back end "
                                "(restart it without --backend onnx)")
        if self.gate is None or isinstance(image, Image.Image):
            img = load_image(image).convert("RGB")
        else:
            with self.gate.decoded(image, name) as decoded:
                img = decoded.convert("RGB")  # a copy that outlives the gate's slot
        size = size or 2 * self.model.image_size
        with self._model_lock(), torch.inference_mode():
            return img, locate(self.model, [img], list(texts), method=method or DEFAULT_METHOD, size=size,
                               tokenizer=self.tokenizer)

    def query_vector(self, text: str | None = None, image: Any = None,
                     name: str = "upload") -> tuple[np.ndarray, np.ndarray | None]:
        """``(query [D], text embedding [D] or None)``: the normalised mean of the given parts."""
        parts, text_vec = [], None
        if text:
            text_vec = self.encode_text([text])[0]
            parts.append(text_vec)
        if image is not None:
            parts.append(self.encode_image(image, name))
        if not parts:
            raise KontrastError("nothing to search for: give a text query and/or an image (--image FILE)")
        q = np.mean(parts, axis=0)
        return (q / max(float(np.linalg.norm(q)), 1e-12)).astype(np.float32), text_vec

    # --------------------------------------------------------------------------------------- search
    def search(self, text: str | None = None, image: Any = None, k: int = 20, exclude: Sequence[str] = (),
               exclude_threshold: float | None = None, captions: bool = False, name: str = "upload") -> list[SearchResult]:
        """Top ``k`` results, best first (see the module docstring for ``exclude`` and ``captions``)."""
        if k < 1:
            raise KontrastError(f"--top-k {k} must be >= 1")
        exclude = [e for e in exclude if e]
        if exclude and exclude_threshold is None and not text:
            raise KontrastError("--exclude with an image-only query needs --exclude-threshold T (e.g. 0.25)")
        query, text_vec = self.query_vector(text, image, name)
        ex_vecs = self.encode_text(exclude) if exclude else None
        name = "caption" if captions else "image"
        loaded = self.index.ann(name)
        total = loaded.index.ntotal if loaded is not None else 0
        fetch = k if ex_vecs is None else k * 4 + 16
        while True:
            scores, ids = self.index.search(query, fetch, name)
            hits = [(float(s), int(i)) for s, i in zip(scores[0], ids[0]) if i >= 0]
            kept = self._filter(hits, ex_vecs, text_vec, exclude_threshold) if ex_vecs is not None else hits
            rows = self.index.store.rows([i for _, i in kept])
            kept = [(s, i) for s, i in kept if i in rows]  # ids an HNSW index still holds after a deletion
            if len(kept) >= k or fetch >= total:
                break
            fetch = min(total, fetch * 4)
        kept = kept[:k]
        canon = [rows[i]["alias_of"] or i for _, i in kept]
        aliases = self.index.store.aliases(canon)
        results = []
        for rank, ((score, i), c) in enumerate(zip(kept, canon), start=1):
            r = rows[i]
            others = [p for p in aliases.get(c, []) + ([self._path(c)] if c != i else []) if p != r["path"]]
            results.append(SearchResult(rank=rank, score=round(score, 6), id=i, path=r["path"], width=r["width"],
                                        height=r["height"], caption=r["caption"], size=r["size"], sha256=r["sha256"],
                                        kind=r["kind"], aliases=others, meta=r["meta"]))
        return results

    def _path(self, row_id: int) -> str:
        row = self.index.store.rows([row_id]).get(row_id)
        return row["path"] if row else ""

    def _filter(self, hits: list[tuple[float, int]], ex_vecs: np.ndarray, text_vec: np.ndarray | None,
                threshold: float | None) -> list[tuple[float, int]]:
        """Drop hits whose image is closer to an excluded text than allowed."""
        rows = self.index.store.rows([i for _, i in hits])
        owner = {i: (rows[i]["alias_of"] or i) for _, i in hits if i in rows}
        vecs = self.index.vectors(set(owner.values()), "image")
        kept = []
        for score, i in hits:
            v = vecs.get(owner.get(i, -1))
            if v is None:
                continue
            ex = float(np.max(ex_vecs @ v))
            limit = threshold if threshold is not None else float(text_vec @ v)
            if ex <= limit:
                kept.append((score, i))
        return kept

    # ----------------------------------------------------------------------------------- zero-shot
    def classify(self, image: Any, labels: Sequence[str], template: str | Sequence[str] = "a photo of a {}.",
                 max_prompts: int | None = None, name: str = "upload") -> list[dict[str, Any]]:
        """Zero-shot label scores for one image: ``[{label, score, prob}]`` sorted by probability.

        Templates are data: ``{}`` is replaced by the label and nothing else in them is interpreted (no
        ``str.format``). With several templates a label's text embedding is the normalised mean over them
        (the CLIP prompt ensemble). ``score`` is the cosine similarity with that embedding; ``prob`` the
        softmax of ``logit_scale * score`` over the labels, or for SigLIP models ``sigmoid(logit_scale * score +
        logit_bias)`` per label (``kontrast.zeroshot.probabilities``).
        ``max_prompts`` caps labels x templates (the text tower runs once per prompt).
        """
        from ..zeroshot import fill_template, probabilities

        labels = [str(label).strip() for label in labels if str(label).strip()]
        templates = [template] if isinstance(template, str) else list(template)
        if not labels:
            raise KontrastError("give at least one label to classify against")
        if not templates:
            raise KontrastError("give at least one template, e.g. 'a photo of a {}.'")
        for t in templates:
            if "{}" not in t:
                raise KontrastError(f"template {t!r} has no {{}} placeholder for the label")
        if max_prompts is not None and len(labels) * len(templates) > max_prompts:
            raise KontrastError(f"{len(labels)} labels x {len(templates)} templates = {len(labels) * len(templates)} "
                                f"prompts; at most {max_prompts} per request")
        img = self.encode_image(image, name)
        prompts = [fill_template(t, label) for label in labels for t in templates]  # label-major: [L * T]
        txt = np.concatenate([self.encode_text(prompts[i: i + 256]) for i in range(0, len(prompts), 256)])
        txt = txt.reshape(len(labels), len(templates), -1).mean(axis=1)  # [L*T, D] -> [L, T, D] -> [L, D]
        txt /= np.maximum(np.linalg.norm(txt, axis=1, keepdims=True), 1e-12)
        sims = txt @ img  # [L]
        probs = probabilities(self.model, torch.from_numpy(np.asarray(sims, dtype=np.float32))).tolist()
        out = [{"label": label, "score": round(float(s), 6), "prob": round(float(p), 6)}
               for label, s, p in zip(labels, sims, probs)]
        return sorted(out, key=lambda d: -d["prob"])


def open_searchers(folders: Sequence[tuple[str, str]], model: str | None = None, pretrained: str | None = None,
                   device: str = "cpu", precision: str = "fp32", lock: bool = True,
                   backend: str = "torch") -> dict[str, Searcher]:
    """``{name: Searcher}`` for ``(name, folder)`` pairs; indexes built with the same model (fingerprint) share one
    loaded model and its lock. ``model`` (default: each index's recorded spec) is checked against every index."""
    out: dict[str, Searcher] = {}
    by_fingerprint: dict[str, Searcher] = {}
    for name, folder in folders:
        if name in out:
            raise KontrastError(f"two indexes are named {name!r}; name them apart with NAME=PATH")
        index = SearchIndex(folder)
        first = by_fingerprint.get(index.model_fingerprint)
        if first is None:
            index.close()
            first = Searcher.open(folder, model=model, pretrained=pretrained, device=device, precision=precision,
                                  lock=lock, backend=backend)
            by_fingerprint[first.index.model_fingerprint] = first
            out[name] = first
        else:
            out[name] = first.with_index(index)
    return out
