"""kontrast.evaluate end to end: datasets, feature cache, results files, bad input, CLI (fixture model)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from PIL import Image

import kontrast
from kontrast.cli import main
from kontrast.errors import KontrastError
from kontrast.evaluate import (
    LinearProbeOptions,
    RetrievalOptions,
    RunOptions,
    ZeroShotOptions,
    evaluate,
    features,
    linear_probe_eval,
    open_dataset,
    zeroshot_eval,
)

RETRIEVAL_KEYS = {
    "image_to_text_R@1",
    "image_to_text_R@5",
    "image_to_text_R@10",
    "text_to_image_R@1",
    "text_to_image_R@5",
    "text_to_image_R@10",
    "mean_rank",
    "median_rank",
}
COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@pytest.fixture(scope="module")
def clip(fixtures_dir):
    return kontrast.load(fixtures_dir / "openai_vit.pt")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KONTRAST_CACHE", str(tmp_path / "kcache"))  # never touch ~/.cache in tests


def _image(path: Path, color, shade: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 16), tuple(min(255, c + shade) for c in color)).save(path)


def _folder(root: Path, per_class: int = 3) -> Path:
    for name, color in COLORS.items():
        for i in range(per_class):
            _image(root / name / f"{i}.png", color, 10 * i)
    return root


def _csv(root: Path, rows: list[str], header: str = "filepath,label") -> Path:
    for name, color in COLORS.items():
        _image(root / f"{name}.png", color)
    path = root / "data.csv"
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


# ---- datasets ------------------------------------------------------------------------------------------
def test_folder_zeroshot_results_files(clip, tmp_path):
    model, pre, tok = clip
    data = _folder(tmp_path / "colors")
    (data / "classnames.txt").write_text("azure\nlime\nscarlet\n")  # in sorted folder order: blue, green, red
    out = tmp_path / "run"
    record = evaluate(
        "zeroshot",
        model,
        data,
        ZeroShotOptions(templates="a photo of {}."),
        preprocess=pre,
        tokenizer=tok,
        out_dir=out,
        run=RunOptions(cache_dir=tmp_path / "cache"),
    )
    assert set(record["metrics"]) == {"top1", "top5", "mean_per_class_recall"}
    assert all(0.0 <= v <= 1.0 for v in record["metrics"].values())
    assert record["metrics"]["top5"] == 1.0  # 3 classes: the true one is always in the top 5
    saved = json.loads((out / "results.json").read_text())
    assert {"model", "model_fingerprint", "dataset", "task", "metrics", "kontrast_version", "date"} <= set(
        saved
    )
    assert saved["model_fingerprint"] == kontrast.fingerprint(model)
    assert [r["class"] for r in saved["details"]["per_class"]] == ["azure", "lime", "scarlet"]
    assert (out / "results.md").is_file() and (out / "confusion_matrix.png").stat().st_size > 0


def test_split_subfolder_and_shard_split(tmp_path, data_dir):
    root = tmp_path / "ds"
    _folder(root / "train")
    _folder(root / "val", per_class=1)
    ds = open_dataset(root, split="val")
    assert ds.kind == "folder" and ds.classes == ["blue", "green", "red"] and len(ds.source.files) == 3
    shards = open_dataset(data_dir / "clipart", split="val")
    assert shards.kind == "webdataset" and [Path(p).name for p in shards.paths] == ["clipart-val-000000.tar"]
    assert shards.label_field == "name"  # no 'label' in the json: the class is the name


def test_csv_several_captions_per_image(clip, tmp_path):
    model, pre, tok = clip
    path = _csv(
        tmp_path,
        [
            "red.png,a red square|crimson",
            "green.png,a green square|a square",
            "red.png,scarlet",
            "blue.png,a blue square|a square",
        ],
        header="filepath,caption",
    )
    ds = open_dataset(path, need="captions")
    assert [(i["filepath"], i["captions"]) for i in ds.source.items] == [
        ("red.png", ["a red square", "crimson", "scarlet"]),
        ("green.png", ["a green square", "a square"]),
        ("blue.png", ["a blue square", "a square"]),
    ]
    record = evaluate(
        "retrieval", model, path, preprocess=pre, tokenizer=tok, run=RunOptions(cache_dir=tmp_path / "cache", workers=1)
    )  # the CSV source goes to a DataLoader worker process
    assert set(record["metrics"]) == RETRIEVAL_KEYS
    details = record["details"]
    assert details["n_images"] == 3 and details["n_captions"] == 7
    assert (
        details["n_distinct_captions"] == 6 and details["n_shared_captions"] == 1
    )  # "a square": green, blue
    assert set(record["metrics"]["mean_rank"]) == {"image_to_text", "text_to_image"}
    # 6 distinct texts, every image has 2+ of them: one is always in the top 5
    assert record["metrics"]["image_to_text_R@5"] == 1.0


# ---- feature cache -------------------------------------------------------------------------------------
def test_cache_hit_skips_embedding_and_file_change_invalidates(clip, tmp_path, monkeypatch):
    model, pre, tok = clip
    calls = []
    real = features.embed_units

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(features, "embed_units", counting)
    data = _folder(tmp_path / "colors")
    kwargs = {"preprocess": pre, "tokenizer": tok, "run": RunOptions(cache_dir=tmp_path / "cache")}
    opts = ZeroShotOptions(templates="{}")
    first = zeroshot_eval(model, data, opts, **kwargs)
    second = zeroshot_eval(model, data, opts, **kwargs)
    assert len(calls) == 1 and first == second
    _image(data / "red" / "0.png", (0, 0, 0))  # a changed file is a different dataset
    zeroshot_eval(model, data, opts, **kwargs)
    assert len(calls) == 2


# ---- linear probe --------------------------------------------------------------------------------------
def test_linear_probe_on_folders(clip, tmp_path):
    model, pre, _ = clip
    root = tmp_path / "ds"
    _folder(root / "train", per_class=4)
    _folder(root / "test", per_class=2)
    metrics = linear_probe_eval(
        model, root, LinearProbeOptions(k_shots=(1, 2)), preprocess=pre, run=RunOptions(cache_dir=tmp_path / "cache")
    )
    assert {"top1", "best_C", "top1_1shot", "top1_2shot"} == set(metrics)
    assert 0.0 <= metrics["top1"] <= 1.0 and metrics["best_C"] > 0


# ---- bad input: one clear line each --------------------------------------------------------------------
def test_missing_class_folder(tmp_path):
    data = _folder(tmp_path / "colors")
    (data / "classnames.txt").write_text("blue\ngreen\nred\nyellow\n")
    with pytest.raises(KontrastError, match="missing class folder.*yellow"):
        open_dataset(data)
    flat = tmp_path / "flat"
    _image(flat / "a.png", (1, 2, 3))
    with pytest.raises(KontrastError, match="no class subfolders"):
        open_dataset(flat)


def test_empty_split(tmp_path):
    root = tmp_path / "ds"
    _folder(root / "train")
    with pytest.raises(KontrastError, match="empty split.*'test'"):
        open_dataset(root, split="test")
    (root / "val").mkdir()
    with pytest.raises(KontrastError, match="empty split"):
        open_dataset(root, split="val")


def test_label_not_in_class_list(tmp_path):
    path = _csv(tmp_path, ["red.png,red", "green.png,green", "blue.png,purple"])
    (tmp_path / "classes.txt").write_text("red\ngreen\nblue\n")
    with pytest.raises(KontrastError, match=r"row 4: label 'purple' is not in the class list"):
        open_dataset(path, classnames=tmp_path / "classes.txt")


def test_bad_input_cli_is_one_line(tmp_path, fixtures_dir, capsys):
    root = tmp_path / "ds"
    _folder(root / "train")
    code, _out, err = _cli(
        [
            "eval",
            "--model",
            str(fixtures_dir / "openai_vit.pt"),
            "--task",
            "zeroshot",
            "--data",
            str(root),
            "--split",
            "test",
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == 2 and err.count("\n") == 1 and "empty split" in err and "Traceback" not in err


# ---- CLI end to end on a real shard --------------------------------------------------------------------
def test_cli_eval_and_report_on_emoji_shard(tmp_path, fixtures_dir, data_dir, capsys):
    shard = str(data_dir / "emoji" / "emoji-google-val_concepts-000000.tar")
    model = str(fixtures_dir / "openai_vit.pt")
    common = ["--model", model, "--data", shard, "--cache-dir", str(tmp_path / "cache")]
    code, out, _ = _cli(
        [
            "eval",
            "--task",
            "zeroshot",
            *common,
            "--label-field",
            "name",
            "--templates",
            "an emoji of a {}.",
            "--out",
            str(tmp_path / "zs"),
        ],
        capsys,
    )
    assert code == 0 and "top1" in out
    zs = json.loads((tmp_path / "zs" / "results.json").read_text())
    assert zs["task"] == "zeroshot" and zs["details"]["n_images"] == 395 and zs["details"]["n_classes"] == 395
    assert all(0.0 <= zs["metrics"][k] <= 1.0 for k in ("top1", "top5", "mean_per_class_recall"))
    assert (
        "most_confused" in zs["details"] and not (tmp_path / "zs" / "confusion_matrix.png").exists()
    )  # > 50 classes

    code, _, _ = _cli(["eval", "--task", "retrieval", *common, "--out", str(tmp_path / "rt")], capsys)
    assert code == 0
    rt = json.loads((tmp_path / "rt" / "results.json").read_text())
    assert set(rt["metrics"]) == RETRIEVAL_KEYS
    assert all(0.0 <= v <= 1.0 for k, v in rt["metrics"].items() if "R@" in k)
    assert 1.0 <= rt["metrics"]["median_rank"]["text_to_image"] <= 395
    assert (tmp_path / "rt" / "recall_at_k.png").is_file() and (tmp_path / "rt" / "results.md").is_file()

    report = tmp_path / "report.html"
    code, out, _ = _cli(
        ["eval-report", str(tmp_path / "zs"), str(tmp_path / "rt"), "--out", str(report)], capsys
    )
    assert code == 0 and "## zeroshot" in out and "## retrieval" in out and "text_to_image_R@1" in out
    assert "<table>" in report.read_text()


# ---- the evaluate() API: one options object per task, the caller's model mode kept ---------------------
def test_options_belong_to_their_task(clip, tmp_path):
    model, pre, tok = clip
    data = _folder(tmp_path / "colors")
    with pytest.raises(KontrastError, match="takes ZeroShotOptions, not RetrievalOptions"):
        evaluate("zeroshot", model, data, RetrievalOptions(), preprocess=pre, tokenizer=tok)
    with pytest.raises(KontrastError, match="k_shots"):
        LinearProbeOptions(k_shots=(0,))
    with pytest.raises(TypeError):  # a caption field is not a zero-shot option
        ZeroShotOptions(caption_field="caption")
    import inspect

    assert len(inspect.signature(evaluate).parameters) <= 9


def test_evaluate_restores_each_modules_mode(clip, tmp_path):
    model, pre, tok = clip
    data = _folder(tmp_path / "colors", per_class=1)
    model.train()
    model.visual.eval()  # e.g. a locked image tower while the text tower fine-tunes
    modes = {name: m.training for name, m in model.named_modules()}
    seen = []
    real = features.embed_units

    def spy(m, *args, **kwargs):
        seen.append(m.training)  # evaluation itself runs in eval mode
        return real(m, *args, **kwargs)

    import kontrast.evaluate.features as feats_module

    feats_module.embed_units = spy
    try:
        evaluate("zeroshot", model, data, ZeroShotOptions(templates="{}"), preprocess=pre, tokenizer=tok,
                 run=RunOptions(use_cache=False))
    finally:
        feats_module.embed_units = real
    assert seen == [False]
    assert {name: m.training for name, m in model.named_modules()} == modes
    with pytest.raises(KontrastError):  # restored on errors too
        evaluate("zeroshot", model, tmp_path / "missing", preprocess=pre, tokenizer=tok)
    assert {name: m.training for name, m in model.named_modules()} == modes
    model.eval()


def test_model_object_is_evaluated_with_its_own_preprocessing(tmp_path, monkeypatch):
    """Without ``preprocess=``, evaluation uses the transform the model's record describes (here SigLIP's
    mean/std 0.5, squash, RGB first), not OpenAI's defaults rebuilt from the config."""
    from kontrast.evaluate import runner

    model, preprocess, _ = kontrast.load(Path(__file__).parent / "fixtures" / "families" / "siglip_hf")
    seen = []
    real = runner.image_features

    def spy(m, pre, *args, **kwargs):
        seen.append(repr(pre))
        return real(m, pre, *args, **kwargs)

    monkeypatch.setattr(runner, "image_features", spy)
    data = _folder(tmp_path / "colors", per_class=1)
    evaluate("zeroshot", model, data, ZeroShotOptions(templates="{}"), run=RunOptions(use_cache=False))
    assert seen == [repr(preprocess)] and "mean=(0.5, 0.5, 0.5)" in seen[0] and "squash" in seen[0]


# ---- long captions -------------------------------------------------------------------------------------
LONG_CAPTION = "a red square " + " ".join(f"with detail number {i}" for i in range(40))  # > 77 tokens


def test_long_text_average_reaches_eval_features_and_cache(clip, tmp_path):
    """``--long-text average`` (RunOptions.long_text) embeds long captions by window averaging, and the
    feature cache keeps the two modes apart."""
    from kontrast.text_features import LongTextWarning, encode_texts

    model, _, tok = clip
    with pytest.warns(LongTextWarning):
        cut = features.text_features(model, tok, [LONG_CAPTION], cache_dir=tmp_path / "c")
    with warnings.catch_warnings():
        warnings.simplefilter("error", LongTextWarning)
        avg = features.text_features(model, tok, [LONG_CAPTION], cache_dir=tmp_path / "c", long_text="average")
    want = encode_texts(model, tok, [LONG_CAPTION], long_text="average").float().numpy()
    want /= ((want**2).sum(-1, keepdims=True)) ** 0.5
    assert abs(avg - want).max() < 1e-5
    assert abs(avg - cut).max() > 1e-3  # a cached truncated embedding was not served for "average"


def test_cli_eval_long_text_flag(tmp_path, fixtures_dir, capsys, recwarn):
    path = _csv(tmp_path, [f"red.png,{LONG_CAPTION}", "green.png,a green square", "blue.png,a blue square"],
                header="filepath,caption")
    argv = ["eval", "--model", str(fixtures_dir / "openai_vit.pt"), "--data", str(path), "--task", "retrieval",
            "--workers", "0", "--recall-k", "1", "--out", str(tmp_path / "out")]
    code, _, _ = _cli([*argv, "--long-text", "average"], capsys)
    assert code == 0
    from kontrast.text_features import LongTextWarning

    assert not [w for w in recwarn if issubclass(w.category, LongTextWarning)]
    code, _, _ = _cli([*argv, "--long-text", "truncate", "--overwrite"], capsys)
    assert code == 0 and [w for w in recwarn if issubclass(w.category, LongTextWarning)]
