"""CLIP_benchmark compatibility: its dataset folders, its result files, its numbers (clip_benchmark 1.6.2).

CLIP_benchmark's own code runs here twice over: its metric modules in this process (its dataset builder
imports torchvision, so the loader below is built the way its ``build_wds_dataset`` builds it), and its
whole command line in a subprocess (``tests/cb_support.py``: stand-in modules for torchvision / open_clip
/ pycocoevalcap, which a webdataset folder and the ``kontrast`` model type never use).
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

import kontrast
from kontrast.cli import main
from kontrast.errors import KontrastError
from kontrast.evaluate import evaluate, open_dataset
from kontrast.evaluate.cb_model import load_kontrast

sys.path.insert(0, str(Path(__file__).parent))
import cb_support

try:  # the reference: .ci/run installs it; not a skip, a missing reference must not pass silently
    import clip_benchmark  # noqa: F401
except ImportError as exc:
    raise ImportError("these tests need CLIP_benchmark: pip install --no-deps clip_benchmark==1.6.2") from exc

FIXTURES = Path(__file__).parent / "fixtures" / "clip_benchmark"
TOL = 1e-6


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KONTRAST_CACHE", str(tmp_path / "kcache"))


@pytest.fixture(scope="module")
def cb_data(data_dir, tmp_path_factory) -> dict[str, Path]:
    return cb_support.make_datasets(data_dir, tmp_path_factory.mktemp("cb_data"))


@pytest.fixture(scope="module")
def default_model():
    return kontrast.load("default")


def _same_result(kontrast_file: dict, cb_file: dict, check_model: bool = True) -> None:
    """Same keys in the same order, same fields, metrics equal to TOL (NaN where NaN)."""
    assert list(kontrast_file) == list(cb_file) == ["dataset", "model", "pretrained", "task", "metrics", "language"]
    fields = ("dataset", "task", "language") + (("model", "pretrained") if check_model else ())
    assert {k: kontrast_file[k] for k in fields} == {k: cb_file[k] for k in fields}
    assert list(kontrast_file["metrics"]) == list(cb_file["metrics"])
    for key, expected in cb_file["metrics"].items():
        got = kontrast_file["metrics"][key]
        assert (math.isnan(got) and math.isnan(expected)) or abs(got - expected) <= TOL, (key, got, expected)


# ---- CLIP_benchmark's metric code, in this process ------------------------------------------------------
def _cb_loader(root: Path, transform, second: str, classes: list[str] | None = None):
    """A DataLoader as clip_benchmark's build_wds_dataset + cli.run build it for a webdataset folder."""
    import torch
    import webdataset as wds

    n = int((root / "test" / "nshards.txt").read_text())
    dataset = (
        wds.WebDataset(str(root / "test" / f"{{0..{n - 1}}}.tar"), nodesplitter=lambda src: src, shardshuffle=False)
        .decode(wds.autodecode.ImageHandler("pil", extensions=["webp", "png", "jpg", "jpeg"]))
        .to_tuple(["webp", "png", "jpg", "jpeg"], second)
        .map_tuple(transform, str.splitlines if second == "txt" else None)
    )
    dataset.classes = classes  # its evaluate() reads dataloader.dataset.classes
    return torch.utils.data.DataLoader(dataset.batched(32), batch_size=None, shuffle=False, num_workers=0)


def test_same_numbers_as_clip_benchmark_metric_code(cb_data, monkeypatch):
    from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval

    monkeypatch.setattr(zeroshot_classification, "float", cb_support._float_of_arrays, raising=False)
    model, transform, tokenizer = load_kontrast("default", "laion400m_e32", None, "cpu")  # its default tag: ignored
    assert not model.training
    for name in ("wds_emoji_category", "wds_emoji_keywords"):
        root = cb_data[name]
        classnames = (root / "classnames.txt").read_text().splitlines()
        templates = (root / "zeroshot_classification_templates.txt").read_text().splitlines()
        label = "npy" if name.endswith("keywords") else "cls"
        expected = zeroshot_classification.evaluate(
            model, _cb_loader(root, transform, label, classnames), tokenizer, classnames, templates, device="cpu", amp=False
        )
        record = evaluate("zeroshot", model, root, preprocess=transform, tokenizer=tokenizer)
        got = record["clip_benchmark"]["metrics"]
        assert set(got) == set(expected) and all(abs(got[k] - expected[k]) <= TOL for k in expected), (got, expected)
        if label == "cls":  # kontrast's own names for the same numbers
            assert abs(record["metrics"]["top1"] - expected["acc1"]) <= TOL
            assert abs(record["metrics"]["mean_per_class_recall"] - expected["mean_per_class_recall"]) <= TOL
    root = cb_data["wds_emoji_captions"]
    expected = zeroshot_retrieval.evaluate(
        model, _cb_loader(root, transform, "txt"), tokenizer, device="cpu", amp=False, recall_k_list=[1, 5, 10]
    )
    record = evaluate("retrieval", model, root, preprocess=transform, tokenizer=tokenizer)
    got = record["clip_benchmark"]["metrics"]
    assert list(got) == list(expected) and all(abs(got[k] - expected[k]) <= TOL for k in expected), (got, expected)
    assert 0 < expected["image_retrieval_recall@10"] < 1  # a real test: neither nothing nor everything found


# ---- CLIP_benchmark's command line, with the kontrast model type -----------------------------------------
def _kontrast_eval(tmp: Path, data: list[Path], *extra: str) -> Path:
    out = tmp / "kontrast"
    argv = ["eval", "--model", "default", "--data", *map(str, data), "--out", str(out), "--workers", "0", *extra]
    assert main(argv) == 0
    return out


def test_clip_benchmark_cli_writes_what_kontrast_eval_writes(cb_data, tmp_path):
    cb_out = tmp_path / "cb"
    cb_out.mkdir()
    common = ["--model_type", "kontrast", "--model", "default", "--pretrained", "", "--no_amp", "--num_workers", "0",
              "--recall_k", "1", "5", "10", "--quiet", "--output", str(cb_out / "{dataset}_{pretrained}_{model}_{language}_{task}.json")]
    root = str(cb_data["wds_emoji_category"].parent / "wds_{dataset}")
    for datasets, task in ((["wds/emoji_category", "wds/emoji_keywords"], "zeroshot_classification"),
                           (["wds/emoji_captions"], "zeroshot_retrieval")):
        done = cb_support.run_cli(["eval", *common, "--dataset", *datasets, "--dataset_root", root, "--task", task])
        assert done.returncode == 0, done.stderr[-2000:]
    names = ("wds_emoji_category", "wds_emoji_keywords", "wds_emoji_captions")
    out = _kontrast_eval(tmp_path, [cb_data[n] for n in names])
    cb_files = sorted(p.name for p in cb_out.glob("*.json"))
    assert len(cb_files) == 3 and sorted(p.name for p in out.glob("*.json")) == cb_files  # its file names
    for name in cb_files:
        _same_result(json.loads((out / name).read_text()), json.loads((cb_out / name).read_text()))

    # `kontrast eval-report --csv` is `clip_benchmark build`
    done = cb_support.run_cli(["build", *map(str, sorted(cb_out.glob("*.json"))), "--output", str(tmp_path / "cb.csv")])
    assert done.returncode == 0, done.stderr[-2000:]
    assert main(["eval-report", str(out), "--csv", str(tmp_path / "k.csv")]) == 0

    def rows(path):
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            return sorted(reader.fieldnames), sorted((r["dataset"], r["task"], r) for r in reader)

    (k_cols, k_rows), (cb_cols, cb_rows) = rows(tmp_path / "k.csv"), rows(tmp_path / "cb.csv")
    assert k_cols == cb_cols and len(k_rows) == len(cb_rows) == 3
    for (_, _, k), (_, _, c) in zip(k_rows, cb_rows):
        assert {f: v for f, v in k.items() if "recall" not in f and "acc" not in f and "precision" not in f} == {
            f: v for f, v in c.items() if "recall" not in f and "acc" not in f and "precision" not in f}
        for f in k:
            if k[f] and f not in ("dataset", "model", "pretrained", "model_fullname", "task", "language"):
                assert abs(float(k[f]) - float(c[f])) <= TOL


# ---- result files that CLIP_benchmark itself wrote (committed) -------------------------------------------
@pytest.mark.parametrize("model_type", ["open_clip", "kontrast"])
def test_result_files_match_committed_clip_benchmark_files(model_type, cb_data, tmp_path, fixtures_dir):
    expected = sorted((FIXTURES / model_type).glob("*.json"))
    assert len(expected) == 4  # classification, names, multi-label, retrieval
    model = str(fixtures_dir / "open_clip_vit") if model_type == "open_clip" else "default"
    out = tmp_path / "kontrast"
    assert main(["eval", "--model", model, "--data", *map(str, cb_data.values()), "--out", str(out),
                 "--workers", "0", "--language", "en"]) == 0
    for path in expected:
        cb_file = json.loads(path.read_text())
        dataset, task = cb_file["dataset"], cb_file["task"]
        [mine] = [json.loads(p.read_text()) for p in out.glob("*.json")
                  if json.loads(p.read_text())["dataset"] == dataset and json.loads(p.read_text())["task"] == task]
        _same_result(mine, cb_file, check_model=model_type == "kontrast")
        assert path.read_text().startswith('{"dataset": ')  # json.dump's separators, one line


# ---- layout, tasks, languages, bad input ------------------------------------------------------------------
def test_task_auto_language_and_layout(cb_data, tmp_path, capsys):
    names = cb_data["wds_emoji_names"]
    de = open_dataset(names, language="de")
    assert de.kind == "clip_benchmark" and de.split == "test" and de.decode_rgb_first
    assert de.classnames == (names / "classnames_de.txt").read_text().splitlines() != open_dataset(names).classnames
    assert de.templates == ["an emoji of a {}.", "a {} emoji."]  # {c} -> {}
    out = _kontrast_eval(tmp_path, [names, cb_data["wds_emoji_captions"]], "--language", "en", "de")
    files = sorted(p.name for p in out.glob("*.json"))
    assert files == [  # names: both languages; captions: one language (one run)
        "emoji_captions__default_en_zeroshot_retrieval.json",
        "emoji_names__default_de_zeroshot_classification.json",
        "emoji_names__default_en_zeroshot_classification.json",
    ]
    en, de_ = (json.loads((out / f).read_text())["metrics"] for f in files[2:0:-1])
    assert en != de_  # German class names give other predictions
    capsys.readouterr()
    assert main(["eval", "--model", "default", "--data", str(names), "--language", "fr", "--out", str(tmp_path / "fr")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "classnames_fr.txt" in err


def _broken(root: Path, tmp_path: Path, name: str) -> Path:
    import shutil

    target = tmp_path / name
    shutil.copytree(root, target)
    return target


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda r: (r / "test" / "nshards.txt").unlink(), "has no nshards.txt"),
        (lambda r: (r / "test" / "nshards.txt").write_text("9\n"), r"3\.tar is missing"),
        (lambda r: (r / "dataset_type.txt").write_text("segmentation\n"), "classification, multilabel, retrieval"),
        (lambda r: (r / "classnames.txt").write_text("a\n\nb\n"), "line 2 is empty"),
        (lambda r: (r / "zeroshot_classification_templates.txt").write_text("a photo\n"), "has no {c}"),
    ],
)
def test_bad_clip_benchmark_folders_are_one_line(cb_data, tmp_path, capsys, damage, message):
    root = _broken(cb_data["wds_emoji_category"], tmp_path, "wds_broken")
    damage(root)
    with pytest.raises(KontrastError, match=message):
        evaluate("zeroshot", "default", root)
    capsys.readouterr()
    assert main(["eval", "--data", str(root), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_rgb_first_decoding_like_clip_benchmark(tmp_path):
    """An RGBA image converts to RGB before the transform, as webdataset's "pil" decoder does there."""
    import io
    import tarfile

    from PIL import Image

    from kontrast.evaluate.cb_layout import DecodeRGBFirst

    rgba = Image.new("RGBA", (40, 30), (200, 10, 10, 0))
    rgba.paste((10, 200, 10, 255), (0, 0, 20, 30))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    pre = kontrast.load(Path(__file__).parents[2] / "shared" / "fixtures" / "openai_vit.pt")[1]
    wrapped = DecodeRGBFirst(pre)
    assert np.array_equal(wrapped(buf.getvalue()).numpy(), pre(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).numpy())
    assert not np.array_equal(wrapped(buf.getvalue()).numpy(), pre(buf.getvalue()).numpy())  # resize in RGBA differs
    root = tmp_path / "wds_one"
    (root / "test").mkdir(parents=True)
    (root / "test" / "nshards.txt").write_text("1")
    (root / "classnames.txt").write_text("red\ngreen\n")
    with tarfile.open(root / "test" / "0.tar", "w") as tar:
        for name, data in (("a.png", buf.getvalue()), ("a.cls", b"1")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    ds = open_dataset(root, need="labels")
    assert "DecodeRGBFirst" in repr(ds.wrap_preprocess(pre)) and ds.templates is None


def test_converter_is_deterministic_and_lossless(data_dir, tmp_path):
    from PIL import Image

    from kontrast.data.sources import TarSource

    convert = cb_support.converter()
    args = [str(data_dir / cb_support.EMOJI_VAL), "--label-field", "category", "--limit", "5"]
    convert.main([*args, "--out", str(tmp_path / "a")])
    convert.main([*args, "--out", str(tmp_path / "b")])
    assert (tmp_path / "a" / "test" / "0.tar").read_bytes() == (tmp_path / "b" / "test" / "0.tar").read_bytes()
    source = next(iter(TarSource([str(data_dir / cb_support.EMOJI_VAL)])))
    converted = next(iter(open_dataset(tmp_path / "a").source))
    assert converted.source.endswith(".webp")
    import io

    assert np.array_equal(np.asarray(Image.open(io.BytesIO(source.data)).convert("RGB")),
                          np.asarray(Image.open(io.BytesIO(converted.data)).convert("RGB")))


def test_linear_probe_on_a_clip_benchmark_folder(data_dir, tmp_path, fixtures_dir):
    convert = cb_support.converter()
    root = tmp_path / "wds_emoji_splits"
    emoji = data_dir / "emoji"
    convert.main([str(emoji / "emoji-google-train-000000.tar"), "--out", str(root), "--split", "train",
                  "--label-field", "category", "--limit", "60"])
    convert.main([str(emoji / "emoji-google-val_concepts-000000.tar"), "--out", str(root), "--split", "test",
                  "--label-field", "category", "--limit", "30"])
    from kontrast.evaluate import LinearProbeOptions

    record = evaluate("linear-probe", str(fixtures_dir / "openai_vit.pt"), root, LinearProbeOptions(k_shots=()))
    assert record["dataset"]["split"] == "test" and record["dataset"]["train"]["split"] == "train"
    assert record["details"]["n_test"] == 30 and "clip_benchmark" not in record  # no CLIP_benchmark file
    assert 0.0 <= record["metrics"]["top1"] <= 1.0
