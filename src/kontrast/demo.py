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
import html
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

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


def describe_model(model, name: str) -> dict:
    """Identity of the model for the report: fingerprint, towers, sizes, how probabilities are computed, checkpoint."""
    cfg = model.config
    if hasattr(cfg, "tower_summary"):  # another family (SigLIP) describes its own towers
        return _model_info(model, name, *cfg.tower_summary())
    vision = (f"ResNet {cfg.vision.layers}, width {cfg.vision.width}" if cfg.vision.is_resnet else
              f"ConvNeXt {cfg.vision.timm_model_name}, {cfg.vision.timm_proj} head" if cfg.vision.kind == "convnext"
              else f"ViT {cfg.vision.layers} layers, width {cfg.vision.width}, patch {cfg.vision.patch_size}")
    text = (f"{cfg.text.hf_model} ({cfg.text.hf_pooler} pooling)" if cfg.text.hf_model else
            f"Transformer {cfg.text.layers} layers, width {cfg.text.width}")
    return _model_info(model, name, vision, text)


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
    return DemoReport(model_name, describe_model(model, model_name), labels, classifications, searches, seconds,
                      list(samples))


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
    path = write_html(report, out / "report.html")
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    return report, path


# ------------------------------------------------------------------------------------------- HTML
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2430}
header{background:#1d2430;color:#fff;padding:18px 28px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:2px 0;color:#c5cbd6;font-size:13px}header code{background:#38414f;color:#fff}main{padding:8px 28px 28px}
h2{font-size:17px;margin:22px 0 10px}code{font-size:12px;background:#eef0f4;padding:1px 4px;border-radius:3px}
.stats{display:flex;gap:12px;flex-wrap:wrap}.stat{background:#fff;border-radius:8px;padding:10px 16px;
box-shadow:0 1px 2px #0002}.stat b{display:block;font-size:22px}.stat span{font-size:12px;color:#667}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(172px,1fr));gap:10px}
.card{background:#fff;border-radius:8px;padding:8px;box-shadow:0 1px 2px #0002;border-top:4px solid #c33}
.card.ok{border-top-color:#2a9d4b}.thumb{height:96px;display:flex;align-items:center;justify-content:center}
.thumb img{max-width:96px;max-height:96px}.truth{font-size:13px;font-weight:600;margin:4px 0 2px}
.style{font-size:11px;color:#778}.pred{font-size:12px;margin-top:3px}.pred .bar{height:5px;background:#dde2ea;
border-radius:3px}.pred .bar i{display:block;height:5px;border-radius:3px;background:#4a7bd0}
.pred.t .bar i{background:#2a9d4b}.pred.t{font-weight:600}.row{display:flex;justify-content:space-between;gap:4px}.row span:first-child{white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.queries{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:10px}
.query{background:#fff;border-radius:8px;padding:10px 12px;box-shadow:0 1px 2px #0002}
.query h3{margin:0 0 8px;font-size:14px}.query h3 small{font-weight:400;color:#667}
.hits{display:flex;gap:8px;flex-wrap:wrap}.hit{width:92px;text-align:center;font-size:11px;overflow-wrap:anywhere}
.hit .thumb{height:72px;border-radius:6px;border:2px solid #ddd}.hit.rel .thumb{border-color:#2a9d4b}
.hit .thumb img{max-width:64px;max-height:64px}table{border-collapse:collapse;font-size:12px;background:#fff}
td,th{padding:3px 8px;border-bottom:1px solid #e3e6eb;text-align:left}footer{font-size:12px;color:#667;padding:0 28px 24px}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _classification_card(c: Classification, sample: SampleImage) -> str:
    preds = "".join(
        f'<div class="pred{" t" if lab == c.label else ""}"><div class="row"><span>{_e(lab)}</span>'
        f'<span>{p:.0%}</span></div><div class="bar"><i style="width:{max(p, 0.01) * 100:.1f}%"></i></div></div>'
        for lab, p in c.top)
    verdict = "correct" if c.correct else f"true label ranked {c.rank}"
    seen = ""
    if c.concept_seen is not None:
        seen = (f'<div class="style">concept {"seen" if c.concept_seen else "unseen"} &middot; style '
                f'{"seen" if c.style_seen else "unseen"} in training</div>')
    return (f'<div class="card{" ok" if c.correct else ""}"><div class="thumb"><img src="{sample.data_uri()}" '
            f'alt="{_e(sample.label)}" title="{_e(sample.file)}"></div><div class="truth">{_e(c.label)}</div>'
            f'<div class="style">{_e(sample.style)} &middot; {_e(verdict)}</div>{seen}{preds}</div>')


def _search_block(s: SearchResult, by_file: dict[str, SampleImage]) -> str:
    hits = "".join(
        f'<div class="hit{" rel" if rel else ""}"><div class="thumb"><img src="{by_file[f].data_uri()}" '
        f'alt="{_e(by_file[f].label)}" title="{_e(f)}"></div>{_e(by_file[f].label)}<br>{score:.3f}</div>'
        for f, score, rel in s.hits)
    return (f'<div class="query"><h3>&ldquo;{_e(s.query)}&rdquo; <small>{sum(r for _, _, r in s.hits)}/{len(s.hits)} '
            f'relevant in the top {len(s.hits)} (green border)</small></h3><div class="hits">{hits}</div></div>')


def render_html(report: DemoReport) -> str:
    """The report as one self-contained HTML page (inline CSS, images as data URIs, no scripts)."""
    info = report.model_info
    by_file = {s.file: s for s in report.samples}
    styles = ", ".join(f"{k} {a}/{b}" for k, (a, b) in report.accuracy_by_style().items())
    seen = "; ".join(f"{k}: {a}/{b} correct" for k, (a, b) in report.accuracy_by_seen().items())
    seen_html = (f"<p>Against the model's training record: {_e(seen)}. A <i>seen</i> concept was in the training "
                 f"data in some art style (never this image); an <i>unseen</i> one only reaches the model through "
                 f"its name.</p>") if seen else "<p>This model carries no record of its training data.</p>"
    mean_p = sum(s.precision for s in report.searches) / max(1, len(report.searches))
    stats = [(f"{report.top1:.0%}", f"zero-shot top-1 ({len(report.classifications)} images)"),
             (f"{report.top5:.0%}", "top-5"), (str(len(report.labels)), "candidate labels"),
             (f"{mean_p:.0%}", f"search precision@{TOP_K_SEARCH}"), (f"{report.seconds.get('total', 0):.1f} s", "load + run time")]
    stat_html = "".join(f'<div class="stat"><b>{_e(v)}</b><span>{_e(k)}</span></div>' for v, k in stats)
    cards = "".join(_classification_card(c, by_file[c.file]) for c in report.classifications)
    blocks = "".join(_search_block(s, by_file) for s in report.searches)
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in info.items() if v is not None)
    timing = ", ".join(f"{k.replace('_', ' ')} {v:.2f} s" for k, v in report.seconds.items())
    templates = "; ".join(LABEL_TEMPLATES)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>kontrast demo report</title><style>{_CSS}</style></head>
<body><header><h1>kontrast demo</h1>
<p>model <b>{_e(report.model_name)}</b> &middot; fingerprint <code>{_e(info.get("fingerprint"))}</code> &middot;
{_e(info.get("architecture"))}, {info.get("parameters", 0) / 1e6:.1f} M parameters, {_e(info.get("image_size"))} px images</p>
<p>Zero-shot classification and text search over {len(report.samples)} bundled images that the default models never saw
in training: emoji of held-out concepts, the OpenMoji style that no training set contains, held-out clip art
({_e(styles)} correct).</p></header>
<main><div class="stats">{stat_html}</div>
<h2>Zero-shot classification: top {TOP_K_LABELS} labels</h2>
<p style="font-size:13px">Each image is scored against {len(report.labels)} labels (its own sample's names plus
{len(report.labels) - len({c.label for c in report.classifications})} distractors), prompts
<code>{_e(templates)}</code> averaged; probabilities: {_e(info.get("probabilities"))}. Green top border: the true label
came first.</p>
<div style="font-size:13px">{seen_html}</div>
<div class="grid">{cards}</div>
<h2>Text search over the sample: top {TOP_K_SEARCH} by cosine similarity</h2><div class="queries">{blocks}</div>
<h2>Model</h2><table>{rows}</table>
<p style="font-size:12px">Timings: {_e(timing)}.</p></main>
<footer>Images: Noto Emoji (Apache-2.0, Google); Twemoji (CC BY 4.0, Twitter, Inc and other contributors);
OpenMoji (CC BY-SA 4.0, &ldquo;All emojis designed by OpenMoji &ndash; the open-source emoji and icon project&rdquo;,
resized); Openclipart 0.18 (public domain). Per-file credits: <code>kontrast/assets/demo/ATTRIBUTION.md</code>.</footer>
</body></html>
"""


def write_html(report: DemoReport, path: str | os.PathLike) -> Path:
    """Write :func:`render_html` to ``path`` (atomically: a temporary file, then a rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(render_html(report))
    os.replace(tmp, path)
    return path
