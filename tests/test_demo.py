"""``kontrast demo``: the report over the bundled sample (with a small random stand-in model, so the test does not
depend on the trained default model's quality), and the completeness of the bundled sample and its attribution."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

import kontrast
from kontrast import demo
from kontrast.cli import main


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch) -> None:
    """Zero-shot classifiers are cached on disk; keep the tests' cache out of the user's home."""
    monkeypatch.setenv("KONTRAST_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> Path:
    """A tiny random CLIP saved in kontrast format."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("standin")
    kontrast.save(kontrast.create_model("tiny-ViT"), folder)
    return folder


def _check_html(text: str, samples: list[demo.SampleImage]) -> None:
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert text.count("<body>") == 1 and text.count("</body>") == 1
    for s in samples:  # every sample image is inlined
        assert s.data_uri() in text, s.file
    for query, _ in demo.QUERIES:
        assert f"&ldquo;{query}&rdquo;" in text
    # self-contained: nothing fetched from elsewhere
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.IGNORECASE)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", text, re.IGNORECASE)
    assert "@import" not in text and "<script" not in text.lower() and "<link" not in text.lower()


def test_run_demo_writes_report(standin: Path, tmp_path: Path) -> None:
    out = tmp_path / "nested" / "out"
    report, path = demo.run_demo(str(standin), out)
    assert path == out / "report.html" and path.is_file()
    samples = demo.load_sample()
    _check_html(path.read_text(encoding="utf-8"), samples)
    assert len(report.classifications) == len(samples) == 32
    labels = demo.label_set(samples)
    assert report.labels == labels and len(labels) == len(set(labels))
    for c in report.classifications:
        assert 1 <= c.rank <= len(labels)
        assert len(c.top) == demo.TOP_K_LABELS
        probs = [p for _, p in c.top]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert c.correct == (c.top[0][0] == c.label)
    assert [s.query for s in report.searches] == [q for q, _ in demo.QUERIES]
    for s in report.searches:
        scores = [sc for _, sc, _ in s.hits]
        assert len(s.hits) == demo.TOP_K_SEARCH and scores == sorted(scores, reverse=True)
        assert all(-1 - 1e-5 <= sc <= 1 + 1e-5 for sc in scores)
    data = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert data["model_info"]["fingerprint"] == kontrast.fingerprint(kontrast.load(str(standin))[0])
    assert data["top1"] == pytest.approx(report.top1) and len(data["classifications"]) == 32
    assert {"load_model", "encode_images", "zero_shot", "search", "where", "total"} <= set(data["seconds"])


def test_report_shows_where_on_request(standin: Path, tmp_path: Path) -> None:
    """Every search hit has its query's map behind a "where?" (``<details>``), and the composite section locates
    four sample pictures' labels, saying whether each peak fell on its own picture."""
    report, path = demo.run_demo(str(standin), tmp_path / "out")
    text = path.read_text(encoding="utf-8")
    for s in report.searches:
        assert set(s.where) == {f for f, _, _ in s.hits}
        for uri in s.where.values():
            assert uri.startswith("data:image/png;base64,") and uri in text
    assert text.count("<summary>where?</summary>") == sum(len(s.hits) for s in report.searches)
    view = report.where
    assert len(view.texts) == len(view.overlays) == len(view.hits) == 4
    assert all(isinstance(h, bool) for h in view.hits) and view.canvas_uri in text
    assert f"{sum(view.hits)}/4 peaks fall on the right picture" in text
    png = Image.open(io.BytesIO(base64.b64decode(view.overlays[0].split(",", 1)[1])))
    assert png.size == (192, 192)  # the 2 x 2 grid of 96 px cells
    data = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert data["where"]["texts"] == view.texts and data["where"]["peak_in_own_cell"] == view.hits


def test_cli_demo(standin: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    assert main(["demo", "--model", str(standin), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "top-1" in printed and str((out / "report.html").resolve()) in printed
    assert "'a red heart'" in printed
    assert len(printed.splitlines()) <= 24  # one screen
    _check_html((out / "report.html").read_text(encoding="utf-8"), demo.load_sample())


def test_cli_demo_missing_model_is_one_line_error(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--model", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("kontrast demo: error:") and "nope.pt" in errors[0]
    assert "Traceback" not in err
    assert not (tmp_path / "o" / "report.html").exists()


def test_cli_demo_out_is_a_file(standin: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "taken").write_text("x")
    assert main(["demo", "--model", str(standin), "--out", str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err
    assert "cannot create the report folder" in err and "--out" in err and "Traceback" not in err


def test_classify_and_search_rank_by_similarity() -> None:
    """With image embeddings equal to their label's text embedding, every image ranks its own label first."""
    samples = demo.load_sample()[:4]
    labels = demo.label_set(samples, distractors=["zebra", "kite"])
    txt = torch.nn.functional.normalize(torch.eye(len(labels))[:, :8] + 0.01, dim=-1)  # [C, 8]; 6 labels < 8 dims
    img = txt[:4]
    fake = SimpleNamespace(logit_scale=torch.tensor(4.6052))  # exp = 100
    result = demo.classify(fake, img, txt, samples, labels)
    assert [c.rank for c in result] == [1, 1, 1, 1]
    probs = (torch.tensor(4.6052).exp() * img @ txt.T).softmax(-1)  # [4, C], computed here by hand
    for i, c in enumerate(result):
        assert c.top[0][0] == c.label == labels[i]
        assert c.top[0][1] == pytest.approx(float(probs[i, i]), rel=1e-5) and c.top[0][1] > 0.9


def test_labels_and_articles() -> None:
    assert demo.with_article("umbrella") == "an umbrella"
    assert demo.with_article("flag of India") == "a flag of India"
    samples = demo.load_sample()
    labels = demo.label_set(samples, distractors=["cat", samples[0].label])
    assert labels[: len(samples)] == [s.label for s in samples] and labels[-1] == "cat"
    assert not set(demo.DISTRACTORS) & {s.label for s in samples}, "a distractor is also a sample label"
    tags = {s.tag for s in samples}
    for query, relevant in demo.QUERIES:  # every query has something to find
        assert set(relevant) & tags, query


def test_bundled_sample_and_attribution_are_complete() -> None:
    root = demo.sample_dir()
    with open(root / "labels.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    files = [r["file"] for r in rows]
    assert len(files) == len(set(files)) and 24 <= len(files) <= 40
    assert sorted(p.name for p in root.glob("*.png")) == sorted(files), "labels.csv and the PNG files differ"
    assert len({r["label"] for r in rows}) == len(rows), "two sample images share a label"
    attribution = (root / "ATTRIBUTION.md").read_text(encoding="utf-8")
    licences = {p.name for p in (root / "LICENSES").iterdir()}
    for r in rows:
        assert f"| `{r['file']}` |" in attribution, f"{r['file']} is not credited in ATTRIBUTION.md"
        with Image.open(io.BytesIO((root / r["file"]).read_bytes())) as im:
            assert im.format == "PNG" and max(im.size) <= 96
    for name in re.findall(r"LICENSES/([\w.-]+)", attribution):
        assert name in licences, f"ATTRIBUTION.md cites LICENSES/{name}, which is not bundled"
    expected = {"google": "Apache-2.0", "twitter": "CC-BY-4.0", "openmoji": "CC-BY-SA-4.0", "clipart": "Public domain"}
    for r in rows:
        assert r["license"].startswith(expected[r["style"]]), r["file"]
    assert {r["style"] for r in rows} == set(expected)


def test_report_says_whether_concept_and_style_were_seen(standin: Path, tmp_path: Path) -> None:
    """With a training record beside the weights, each image is marked seen/unseen (concept and style)."""
    import shutil

    model_dir = tmp_path / "with_record"
    shutil.copytree(standin, model_dir)
    samples = demo.load_sample()
    emoji = next(s for s in samples if s.style == "google")
    clip = next(s for s in samples if s.style == "clipart")
    record = {"styles": {"google": 10, "openclipart": 5}, "concepts": [emoji.concept], "names": [clip.label.lower()],
              "pretrained": {"image_tower": "EfficientNet-Lite0, ImageNet-1k weights"}}
    (model_dir / demo.TRAINING_RECORD).write_text(json.dumps(record), encoding="utf-8")
    report, path = demo.run_demo(str(model_dir), tmp_path / "out")
    marks = {c.file: (c.concept_seen, c.style_seen) for c in report.classifications}
    assert marks[emoji.file] == (True, True) and marks[clip.file] == (True, True)
    other = next(s for s in samples if s.style == "openmoji")
    assert marks[other.file] == (other.concept == emoji.concept, False)
    assert sum(b for _, b in report.accuracy_by_seen().values()) == len(samples)
    html = path.read_text(encoding="utf-8")
    assert "concept seen" in html
    assert "EfficientNet-Lite0, ImageNet-1k weights" in html and "refer to the recorded training data only" in html
    saved = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert saved["classifications"][0]["concept_seen"] is not None and saved["accuracy_by_seen"]
    plain, _ = demo.run_demo(str(standin), tmp_path / "plain")  # no record: nothing claimed
    assert all(c.concept_seen is None for c in plain.classifications) and not plain.accuracy_by_seen()


def test_every_emoji_sample_names_its_concept() -> None:
    for s in demo.load_sample():
        assert bool(s.concept) == (s.style != "clipart"), s.file
