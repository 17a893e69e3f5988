"""``kontrast demo``: zero-shot classification and text search over a bundled sample, as an HTML report.

The sample (``kontrast/assets/demo/``) is 32 small images from the held-out splits of kontrast's developer
data (emoji concepts never trained on, the OpenMoji style never trained on, clip-art names never trained on),
with a class label and a coarse tag each (``labels.csv``) and their licences (``ATTRIBUTION.md``,
``LICENSES/``). The demo needs no network and no user files: it loads a model (the embedded default one
unless told otherwise), classifies every image among the sample's labels plus distractor names, runs a few
text queries over the sample, and writes a self-contained ``report.html`` (images inlined as data URIs)
and ``report.json`` (the same numbers, for scripts).

The library part never prints; :func:`run_demo` reports stages through an optional callback and returns a
:class:`DemoReport` that the CLI summarises.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .errors import KontrastError

#: Names that are not in the sample: the classifier must also rule these out.
DISTRACTORS: tuple[str, ...] = (
    "cat", "horse", "elephant", "fish", "butterfly", "owl", "apple", "pizza", "ice cream", "carrot",
    "piano", "drum", "trumpet", "bicycle", "car", "rocket", "house", "tree", "sun", "book", "clock",
    "key", "shoe", "flag of France", "flag of Japan", "blue heart",
)
#: Text queries run over the sample, each with the sample tags that count as a correct hit.
QUERIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("a red heart", ("heart",)),
    ("an animal", ("animal",)),
    ("food", ("food",)),
    ("a flag", ("flag",)),
    ("a musical instrument", ("instrument",)),
    ("a vehicle", ("vehicle",)),
)
#: Prompt templates for class names (``{}`` = label with its article) and for queries (``{}`` = query as typed).
LABEL_TEMPLATES: tuple[str, ...] = ("an emoji of {}", "clip art of {}", "a picture of {}")
QUERY_TEMPLATES: tuple[str, ...] = ("{}", "an emoji of {}", "clip art of {}")
TOP_K_LABELS = 3
TOP_K_SEARCH = 5

Progress = Callable[[str], None]


@dataclass
class SampleImage:
    """One bundled image: file name, expected label, coarse tag, art style and licence, and its PNG bytes."""

    file: str
    label: str
    tag: str
    style: str
    license: str
    data: bytes = field(repr=False)
    concept: str = ""  # emoji: the concept (base code points, as in the training data's concept split)

    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.data).decode("ascii")


@dataclass
class Classification:
    """Zero-shot result for one image: the top labels with their probabilities (``kontrast.zeroshot.probabilities``:
    a softmax, or a sigmoid per label for SigLIP models), and where the truth ranked."""

    file: str
    label: str
    top: list[tuple[str, float]]
    rank: int  # 1-based rank of the true label among all labels
    concept_seen: bool | None = None  # was this concept (emoji code points / picture name) in the training data?
    style_seen: bool | None = None  # was this art style in the training data? (None: the model has no record)

    @property
    def correct(self) -> bool:
        return self.rank == 1


@dataclass
class SearchResult:
    """One text query: its best matches as ``(file, cosine similarity, relevant)``, and precision in the top k."""

    query: str
    hits: list[tuple[str, float, bool]]
    where: dict[str, str] = field(default_factory=dict)  # file -> PNG data URI of the query's map over that hit

    @property
    def precision(self) -> float:
        return sum(rel for _, _, rel in self.hits) / max(1, len(self.hits))


@dataclass
class DemoReport:
    """Everything the report shows: model identity, per-image classifications, searches, timings."""

    model_name: str
    model_info: dict
    labels: list[str]
    classifications: list[Classification]
    searches: list[SearchResult]
    seconds: dict[str, float]
    samples: list[SampleImage] = field(repr=False, default_factory=list)
    where: Any = None  # kontrast.locate.views.CompositeView: labels located in a grid of sample pictures

    @property
    def top1(self) -> float:
        return sum(c.rank == 1 for c in self.classifications) / max(1, len(self.classifications))

    @property
    def top5(self) -> float:
        return sum(c.rank <= 5 for c in self.classifications) / max(1, len(self.classifications))

    def accuracy_by_style(self) -> dict[str, tuple[int, int]]:
        """``style -> (correct, total)`` over the sample, in the order styles first appear."""
        style = {s.file: s.style for s in self.samples}
        out: dict[str, tuple[int, int]] = {}
        for c in self.classifications:
            ok, n = out.get(style.get(c.file, "?"), (0, 0))
            out[style.get(c.file, "?")] = (ok + c.correct, n + 1)
        return out

    def accuracy_by_seen(self) -> dict[str, tuple[int, int]]:
        """``"concept unseen, style seen" -> (correct, total)`` etc.; empty when the model has no training record."""
        out: dict[str, tuple[int, int]] = {}
        for c in self.classifications:
            if c.concept_seen is None:
                continue
            key = f"concept {'seen' if c.concept_seen else 'unseen'}, style {'seen' if c.style_seen else 'unseen'}"
            ok, n = out.get(key, (0, 0))
            out[key] = (ok + c.correct, n + 1)
        return dict(sorted(out.items()))

    def to_dict(self) -> dict:
        """JSON-ready summary (no image bytes)."""
        return {
            "model": self.model_name, "model_info": self.model_info, "labels": self.labels,
            "top1": self.top1, "top5": self.top5,
            "accuracy_by_style": {k: {"correct": a, "total": b} for k, (a, b) in self.accuracy_by_style().items()},
            "accuracy_by_seen": {k: {"correct": a, "total": b} for k, (a, b) in self.accuracy_by_seen().items()},
            "classifications": [asdict(c) | {"correct": c.correct} for c in self.classifications],
            "searches": [{"query": s.query, "precision": s.precision,
                          "hits": [{"file": f, "score": sc, "relevant": r} for f, sc, r in s.hits]} for s in self.searches],
            "where": None if self.where is None else {
                "texts": self.where.texts, "peak_in_own_cell": self.where.hits,
                "files": [c.file for c in where_samples(self.samples)]},
            "seconds": self.seconds,
        }


# ------------------------------------------------------------------------------------------- the sample
def sample_dir() -> Path:
    """Folder of the bundled sample inside the installed package."""
    return Path(str(resources.files("kontrast") / "assets" / "demo"))


def load_sample(folder: str | os.PathLike | None = None) -> list[SampleImage]:
    """The sample images listed in ``labels.csv`` (in its order), with their bytes."""
    root = Path(folder) if folder is not None else sample_dir()
    table = root / "labels.csv"
    if not table.is_file():
        raise KontrastError(f"the demo sample is missing from this installation ({table}); reinstall kontrast")
    samples = []
    with open(table, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            path = root / row["file"]
            if not path.is_file():
                raise KontrastError(f"demo sample image {path} is missing; reinstall kontrast")
            samples.append(SampleImage(row["file"], row["label"], row["tags"], row["style"], row["license"],
                                       path.read_bytes(), row.get("concept") or ""))
    return samples


def label_set(samples: Sequence[SampleImage], distractors: Sequence[str] = DISTRACTORS) -> list[str]:
    """The sample's labels followed by the distractors, without duplicates."""
    return list(dict.fromkeys([s.label for s in samples] + list(distractors)))


def with_article(label: str) -> str:
    """``"umbrella"`` -> ``"an umbrella"``, ``"flag of India"`` -> ``"a flag of India"`` (the captions' style)."""
    return ("an " if label[:1].lower() in "aeiou" else "a ") + label


# ------------------------------------------------------------------------------------------- the model work
def label_embeddings(model, tokenizer, labels: Sequence[str]) -> torch.Tensor:
    """Zero-shot classifier weights ``[C, E]`` (``kontrast.zeroshot``): prompt ensemble of each label with its article."""
    from .zeroshot import build_classifier

    return build_classifier(model, tokenizer, [with_article(label) for label in labels], templates=list(LABEL_TEMPLATES))


@torch.no_grad()
def image_embeddings(model, preprocess, samples: Sequence[SampleImage]) -> torch.Tensor:
    """Normalised image embeddings ``[N, E]`` of the sample."""
    param = next(model.parameters())
    batch = torch.stack([preprocess(s.data) for s in samples]).to(param.device, param.dtype)  # [N, 3, H, W]
    return model.encode_image(batch, normalize=True).float()


def classify(model, img: torch.Tensor, txt: torch.Tensor, samples: Sequence[SampleImage],
             labels: Sequence[str], k: int = TOP_K_LABELS) -> list[Classification]:
    """Probabilities of each image (``kontrast.zeroshot.classify``: softmax, or sigmoid per label for SigLIP);
    top-k labels and the rank of the true one."""
    from .zeroshot import classify as zeroshot_probs

    probs = zeroshot_probs(model, img, txt)  # [N, C]
    order = probs.argsort(dim=-1, descending=True)
    out = []
    for i, s in enumerate(samples):
        ranked = order[i].tolist()
        rank = ranked.index(labels.index(s.label)) + 1
        out.append(Classification(s.file, s.label, [(labels[j], float(probs[i, j])) for j in ranked[:k]], rank))
    return out


def search(model, tokenizer, img: torch.Tensor, samples: Sequence[SampleImage],
           queries: Sequence[tuple[str, Sequence[str]]] = QUERIES, k: int = TOP_K_SEARCH) -> list[SearchResult]:
    """Rank the sample by cosine similarity to each query (a small prompt ensemble of the query as typed)."""
    from .text_features import encode_texts
    from .zeroshot import fill_template

    prompts = [fill_template(t, q) for q, _ in queries for t in QUERY_TEMPLATES]
    emb = encode_texts(model, tokenizer, prompts).float()  # [Q*T, E], unit rows
    emb = emb.reshape(len(queries), len(QUERY_TEMPLATES), -1)  # [Q*T, E] -> [Q, T, E]
    q_emb = torch.nn.functional.normalize(emb.mean(dim=1), dim=-1)  # [Q, E]
    sims = q_emb @ img.to(q_emb.device).T  # [Q, N]
    results = []
    for qi, (query, tags) in enumerate(queries):
        top = sims[qi].argsort(descending=True)[:k].tolist()
        results.append(SearchResult(query, [(samples[j].file, float(sims[qi, j]), samples[j].tag in tags) for j in top]))
    return results


def where_samples(samples: Sequence[SampleImage], n: int = 4) -> list[SampleImage]:
    """The pictures of the "where" composite: the first ``n`` emoji with distinct labels."""
    picked: dict[str, SampleImage] = {}
    for s in samples:
        if s.style != "clipart" and s.label not in picked:
            picked[s.label] = s
    return list(picked.values())[:n]


def add_where_views(model, tokenizer, report: DemoReport) -> None:
    """Maps of where each search query is in its hits, and a composite of four pictures with each label located
    (``kontrast.locate``); needs the PyTorch image tower (skipped for other back ends)."""
    if not hasattr(model, "visual"):
        return
    import io

    from PIL import Image

    from .locate.views import composite_view, overlay_uris
    from .zeroshot import fill_template

    by_file = {s.file: s for s in report.samples}
    pictures = {f: Image.open(io.BytesIO(s.data)).convert("RGB") for f, s in by_file.items()}
    for result in report.searches:
        files = [f for f, _, _ in result.hits]
        result.where = dict(zip(files, overlay_uris(model, tokenizer, [pictures[f] for f in files], result.query)))
    chosen = where_samples(report.samples)
    texts = [fill_template(LABEL_TEMPLATES[0], with_article(s.label)) for s in chosen]
    report.where = composite_view(model, tokenizer, [pictures[s.file] for s in chosen], texts)


def describe_model(model, name: str) -> dict:
    """Identity of the model for the report: fingerprint, towers, sizes, how probabilities are computed, checkpoint."""
    cfg = model.config
    if hasattr(cfg, "tower_summary"):  # another family (SigLIP) describes its own towers
        return _model_info(model, name, *cfg.tower_summary())
    vision = (f"ResNet {cfg.vision.layers}, width {cfg.vision.width}" if cfg.vision.is_resnet else
              f"ConvNeXt {cfg.vision.timm_model_name}, {cfg.vision.timm_proj} head" if cfg.vision.kind == "convnext"
              else f"EfficientNet-Lite {cfg.vision.timm_model_name}, {cfg.vision.image_size} px, "
                   f"{cfg.vision.timm_proj} head" if cfg.vision.kind == "efficientnet_lite"
              else f"ViT {cfg.vision.layers} layers, width {cfg.vision.width}, patch {cfg.vision.patch_size}")
    text = (f"{cfg.text.hf_model} ({cfg.text.hf_pooler} pooling)" if cfg.text.hf_model else
            f"Transformer {cfg.text.layers} layers, width {cfg.text.width}")
    info = _model_info(model, name, vision, text)
    pretrained = (training_record(model) or {}).get("pretrained") or {}
    if pretrained.get("image_tower"):  # what the image tower learnt before the recorded training data
        info["image tower pretrained on"] = pretrained["image_tower"]
    return info


def _model_info(model, name: str, vision: str, text: str) -> dict:
    from .record import fingerprint
    from .zeroshot import uses_sigmoid

    bias = getattr(model, "logit_bias", None)
    return {
        "name": name, "architecture": model.config.name or "custom config", "fingerprint": fingerprint(model),
        "image_size": model.image_size, "embed_dim": model.embed_dim, "vision": vision, "text": text,
        "parameters": sum(p.numel() for p in model.parameters()),
        "logit_scale": round(float(model.logit_scale.detach().exp()), 3),
        "logit_bias": None if bias is None else round(float(bias.detach()), 3),
        "probabilities": ("sigmoid(scale * cos + bias) per label (SigLIP)" if uses_sigmoid(model)
                          else "softmax over the labels"),
        "checkpoint": getattr(model, "checkpoint_path", None),
    }


#: The demo's style names -> the style names of a training record (``training_data.json``).
TRAINING_STYLE = {"google": "google", "twitter": "twitter", "openmoji": "openmoji", "clipart": "openclipart"}


def training_record(model) -> dict | None:
    """The record of what a model was trained on (``training_data.json`` beside its weights: styles, emoji
    concepts, picture names), or None when the model carries none."""
    path = getattr(model, "checkpoint_path", None)
    if not path:
        return None
    record = Path(path) / TRAINING_RECORD if Path(path).is_dir() else Path(path).parent / TRAINING_RECORD
    if not record.is_file():
        return None
    return json.loads(record.read_text(encoding="utf-8"))


TRAINING_RECORD = "training_data.json"


def mark_seen(classifications: Sequence[Classification], samples: Sequence[SampleImage], record: dict | None) -> None:
    """Set ``concept_seen`` / ``style_seen`` of each classification from a training record."""
    if record is None:
        return
    import re

    concepts, names, styles = set(record.get("concepts", ())), set(record.get("names", ())), set(record.get("styles", ()))
    by_file = {s.file: s for s in samples}
    for c in classifications:
        s = by_file[c.file]
        words = " ".join(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w
                         for w in re.findall(r"[a-z0-9]+", s.label.lower()))
        c.concept_seen = s.concept in concepts if s.concept else words in names
        c.style_seen = TRAINING_STYLE.get(s.style, s.style) in styles


def build_report(model, preprocess, tokenizer, model_name: str, samples: Sequence[SampleImage] | None = None,
                 distractors: Sequence[str] = DISTRACTORS, queries: Sequence[tuple[str, Sequence[str]]] = QUERIES,
                 progress: Progress | None = None) -> DemoReport:
    """Classify and search the sample with an already loaded model (no files written)."""
    note = progress or (lambda _msg: None)
    samples = list(samples) if samples is not None else load_sample()
    labels = label_set(samples, distractors)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    note(f"encoding {len(samples)} images")
    img = image_embeddings(model, preprocess, samples)
    seconds["encode_images"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    note(f"classifying among {len(labels)} labels")
    txt = label_embeddings(model, tokenizer, labels)
    classifications = classify(model, img, txt, samples, labels)
    mark_seen(classifications, samples, training_record(model))
    seconds["zero_shot"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    note(f"running {len(queries)} searches")
    searches = search(model, tokenizer, img, samples, queries)
    seconds["search"] = time.perf_counter() - t2
    report = DemoReport(model_name, describe_model(model, model_name), labels, classifications, searches, seconds,
                        list(samples))
    t3 = time.perf_counter()
    note("locating queries and labels in the pictures")
    add_where_views(model, tokenizer, report)
    seconds["where"] = time.perf_counter() - t3
    return report


def run_demo(model: str = "default", out_dir: str | os.PathLike = "kontrast-demo", device: str = "cpu",
             precision: str = "fp32", progress: Progress | None = None) -> tuple[DemoReport, Path]:
    """Load ``model``, build the report over the bundled sample, write ``out_dir/report.html`` and ``report.json``.

    Returns the report and the path of the HTML file.
    """
    from .api import load

    note = progress or (lambda _msg: None)
    out = Path(out_dir)
    try:  # fail before the model work, not after it
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KontrastError(f"cannot create the report folder {out}: {exc.strerror}; pass another --out") from exc
    t0 = time.perf_counter()
    note(f"loading model {model}")
    loaded, preprocess, tokenizer = load(model, device=device, precision=precision)
    load_s = time.perf_counter() - t0
    report = build_report(loaded, preprocess, tokenizer, str(model), progress=progress)
    report.seconds = {"load_model": load_s, **report.seconds}
    report.seconds["total"] = time.perf_counter() - t0
    from .demo_html import write_html

    path = write_html(report, out / "report.html")
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    return report, path
