"""``kontrast classify``: JSON lines and tables agree with ``kontrast.zeroshot``; bad images are skipped."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

import kontrast
from kontrast import zeroshot as zs
from kontrast.cli import main

N_CONCEPTS = 10


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KONTRAST_CACHE", str(tmp_path / "cache"))
    zs.clear_memory_cache()


@pytest.fixture(scope="module")
def emoji(data_dir, tmp_path_factory) -> tuple[Path, list[str]]:
    """The same N_CONCEPTS val_concepts emoji in the Google and Twitter styles, as PNG files; their names."""
    root = tmp_path_factory.mktemp("emoji")
    samples: dict[str, dict[str, tuple[bytes, str]]] = {}
    for style in ("google", "twitter"):
        with tarfile.open(data_dir / "emoji" / f"emoji-{style}-val_concepts-000000.tar") as tar:
            members = {m.name: m for m in tar.getmembers()}
            for name, member in members.items():
                if name.endswith(".json"):
                    meta = json.loads(tar.extractfile(member).read())
                    png = tar.extractfile(members[name[:-5] + ".png"]).read()
                    samples.setdefault(meta["concept"], {})[style] = (png, meta["name"])
    concepts = sorted(c for c, s in samples.items() if len(s) == 2)[:N_CONCEPTS]
    names = []
    for concept in concepts:
        for style, (png, name) in samples[concept].items():
            (root / style).mkdir(exist_ok=True)
            (root / style / f"{concept}.png").write_bytes(png)
        names.append(samples[concept]["google"][1])
    return root, names


@pytest.fixture(scope="module")
def model_path(fixtures_dir) -> str:
    return str(fixtures_dir / "openai_vit.pt")


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_json_lines_match_zeroshot(emoji, model_path, capsys):
    root, names = emoji
    rc = main(["classify", str(root), "--labels", *names, "--model", model_path, "--json", "--top-k", "3"])
    out = capsys.readouterr().out
    assert rc == 0
    rows = _json_lines(out)
    images = sorted(str(p) for p in root.rglob("*.png"))
    assert [r["image"] for r in rows] == images and len(images) == 2 * N_CONCEPTS
    assert all(len(r["labels"]) == 3 and len(r["scores"]) == 3 for r in rows)
    assert all(r["scores"] == sorted(r["scores"], reverse=True) for r in rows)

    model, preprocess, tokenizer = kontrast.load(model_path)
    clf = zs.ZeroShotClassifier(model, preprocess, tokenizer, names, templates="simple", cache=False)
    probs = clf(images)
    expected = zs.top_k(probs, names, 3)
    assert [r["labels"] for r in rows] == [[n for n, _ in row] for row in expected]
    for r, row in zip(rows, expected):
        assert r["scores"] == pytest.approx([p for _, p in row], abs=1e-6)


def test_templates_labels_file_and_table(emoji, model_path, tmp_path, capsys):
    root, names = emoji
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(names[3:]) + "\n\n", encoding="utf-8")
    image = min((root / "twitter").glob("*.png"))
    rc = main(["classify", str(image), "--labels", *names[:3], "--labels-file", str(labels), "--templates", "imagenet",
               "--model", model_path, "--top-k", "2"])
    out = capsys.readouterr().out
    assert rc == 0
    lines = out.splitlines()
    assert lines[0] == str(image) and len(lines) == 3
    model, preprocess, tokenizer = kontrast.load(model_path)
    weights = zs.build_classifier(model, tokenizer, names, templates="imagenet", cache=False)
    with torch.no_grad():
        probs = zs.classify(model, model.encode_image(preprocess(str(image))[None]), weights)
    (best, p), _ = zs.top_k(probs, names, 2)[0]
    assert lines[1].split()[0] == best.split()[0] and lines[1].endswith(f"{p:.2%}".rjust(7))


def test_unreadable_images_are_skipped(emoji, model_path, tmp_path, capsys):
    root, names = emoji
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "notes.png").write_text("not an image")
    good = sorted((root / "google").glob("*.png"))[:2]
    truncated = bad / "truncated.png"
    truncated.write_bytes(good[0].read_bytes()[:100])
    missing = tmp_path / "missing.png"
    rc = main(["classify", str(good[0]), str(bad), str(missing), str(good[1]), "--labels", *names,
               "--model", model_path, "--json"])
    captured = capsys.readouterr()
    assert rc == 0
    assert [r["image"] for r in _json_lines(captured.out)] == [str(good[0]), str(good[1])]
    err = captured.err.splitlines()
    skipped = [line for line in err if line.startswith("kontrast classify: skipped")]
    assert len(skipped) == 3
    assert any("missing.png" in line for line in skipped) and any("notes.png" in line for line in skipped)
    assert "3 of 5 image(s) could not be read" in captured.err
    # nothing readable at all: exit status 1
    assert main(["classify", str(bad), "--labels", "a", "b", "--model", model_path]) == 1


def test_usage_errors(emoji, model_path, tmp_path, capsys):
    root, _ = emoji
    assert main(["classify", str(root), "--model", model_path]) == 2
    assert "no labels" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["classify", str(tmp_path / "empty"), "--labels", "a", "--model", model_path]) == 2
    assert "no images found" in capsys.readouterr().err
    assert main(["classify", str(root), "--labels", "a", "--templates", "a photo", "--model", model_path]) == 2
    assert "a photo" in capsys.readouterr().err


def test_long_labels_warn_or_average(emoji, model_path, capsys):
    root, names = emoji
    long_label = " ".join(["an extremely detailed description of a small yellow bird"] * 12)
    image = str(min((root / "google").glob("*.png")))
    args = ["classify", image, "--labels", names[0], long_label, "--model", model_path, "--json",
            "--templates", "simple"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "warning:" in captured.err and "truncated" in captured.err
    truncated = _json_lines(captured.out)[0]
    assert main([*args, "--long-text", "average"]) == 0
    captured = capsys.readouterr()
    assert "truncated" not in captured.err
    averaged = _json_lines(captured.out)[0]
    assert sorted(truncated["labels"]) == sorted(averaged["labels"])
    assert truncated["scores"] != averaged["scores"]


def test_console_entry_point(emoji, model_path):
    """The real command in a subprocess: valid JSON on stdout, nothing else there."""
    root, names = emoji
    proc = subprocess.run([sys.executable, "-m", "kontrast", "classify", str(root / "google"), "--labels", *names[:4],
                           "--model", model_path, "--json", "--top-k", "1", "--no-cache"], check=False,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = _json_lines(proc.stdout)
    assert len(rows) == N_CONCEPTS and all(r["labels"][0] in names[:4] for r in rows)
