"""The ``kontrast demo`` report as one self-contained HTML page (inline CSS, images as data URIs, no scripts)."""

from __future__ import annotations

import html
import os
from pathlib import Path

from .demo import (
    LABEL_TEMPLATES,
    TOP_K_LABELS,
    TOP_K_SEARCH,
    Classification,
    DemoReport,
    SampleImage,
    SearchResult,
)

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
.hit .thumb img{max-width:64px;max-height:64px}.hit details{margin-top:2px}.hit summary{cursor:pointer;color:#4a7bd0}
.hit details img{width:88px;border-radius:4px}.where{display:flex;gap:12px;flex-wrap:wrap;align-items:flex-start}
.where figure{margin:0;background:#fff;border-radius:8px;padding:8px;box-shadow:0 1px 2px #0002;font-size:12px;width:200px}
.where figure img{width:192px;height:192px;image-rendering:auto}.where .miss{color:#c33}.where .hit2{color:#2a9d4b}table{border-collapse:collapse;font-size:12px;background:#fff}
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
    def where(f: str) -> str:
        return (f'<details><summary>where?</summary><img src="{s.where[f]}" alt="where &ldquo;{_e(s.query)}&rdquo; '
                f'is in {_e(f)}"></details>') if f in s.where else ""

    hits = "".join(
        f'<div class="hit{" rel" if rel else ""}"><div class="thumb"><img src="{by_file[f].data_uri()}" '
        f'alt="{_e(by_file[f].label)}" title="{_e(f)}"></div>{_e(by_file[f].label)}<br>{score:.3f}{where(f)}</div>'
        for f, score, rel in s.hits)
    return (f'<div class="query"><h3>&ldquo;{_e(s.query)}&rdquo; <small>{sum(r for _, _, r in s.hits)}/{len(s.hits)} '
            f'relevant in the top {len(s.hits)} (green border)</small></h3><div class="hits">{hits}</div></div>')


def _where_section(report: DemoReport) -> str:
    view = report.where
    if view is None:
        return ""
    figures = "".join(
        f'<figure><img src="{uri}" alt="where &ldquo;{_e(text)}&rdquo; is"><figcaption>&ldquo;{_e(text)}&rdquo;: '
        f'{"<b class=hit2>peak on its picture</b>" if hit else "<b class=miss>peak elsewhere</b>"}</figcaption></figure>'
        for text, uri, hit in zip(view.texts, view.overlays, view.hits))
    return (f'<h2>Where in the picture</h2><p style="font-size:13px">Four sample pictures in one image; for each '
            f'label, the similarity of every patch to its prompt (<code>kontrast locate</code>, MaskCLIP dense '
            f'features, red = most similar). {sum(view.hits)}/{len(view.hits)} peaks fall on the right picture. '
            f'Each search hit below has the same view of its query under <i>where?</i>.</p><div class="where">'
            f'<figure><img src="{view.canvas_uri}" alt="the composite"><figcaption>the composite</figcaption>'
            f'</figure>{figures}</div>')


def render_html(report: DemoReport) -> str:
    """The report as one self-contained HTML page (inline CSS, images as data URIs, no scripts: the "where?"
    views open with ``<details>``)."""
    info = report.model_info
    by_file = {s.file: s for s in report.samples}
    styles = ", ".join(f"{k} {a}/{b}" for k, (a, b) in report.accuracy_by_style().items())
    seen = "; ".join(f"{k}: {a}/{b} correct" for k, (a, b) in report.accuracy_by_seen().items())
    seen_html = (f"<p>Against the model's training record: {_e(seen)}. A <i>seen</i> concept was in the training "
                 f"data in some art style (never this image); an <i>unseen</i> one only reaches the model through "
                 f"its name.</p>") if seen else "<p>This model carries no record of its training data.</p>"
    if info.get("image tower pretrained on"):
        seen_html += ("<p>Before that training its image tower learnt from other pictures (see <i>image tower "
                      "pretrained on</i> under Model): <i>seen</i> and <i>unseen</i> refer to the recorded training "
                      "data only.</p>")
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
{_where_section(report)}
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
