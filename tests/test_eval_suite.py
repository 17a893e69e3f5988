"""Many models x many datasets in one run: planning, resuming a stopped suite, resuming a stopped dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

import kontrast
from kontrast.cli import main
from kontrast.errors import KontrastError
from kontrast.evaluate import RunOptions, ZeroShotOptions, evaluate, features
from kontrast.evaluate.suite import DatasetSpec, ModelSpec, plan, read_benchmark, run_suite

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KONTRAST_CACHE", str(tmp_path / "kcache"))


def _folder(root: Path, shade: int = 0) -> Path:
    for name, color in COLORS.items():
        for i in range(2):
            root.joinpath(name).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (20, 16), tuple(min(255, c + shade + 10 * i) for c in color)).save(root / name / f"{i}.png")
    return root


def _csv(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, color in COLORS.items():
        Image.new("RGB", (16, 16), color).save(root / f"{name}.png")
        rows.append(f"{name}.png,a {name} square")
    (root / "captions.csv").write_text("filepath,caption\n" + "\n".join(rows) + "\n")
    return root / "captions.csv"


def _shard(path: Path, shade: int) -> str:
    """A webdataset shard of 6 colour squares with ``.cls`` labels."""
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for i, (name, color) in enumerate(list(COLORS.items()) * 2):
            buf = io.BytesIO()
            Image.new("RGB", (16, 16), tuple(min(255, c + shade + i) for c in color)).save(buf, format="PNG")
            for member, data in ((f"s{i}.png", buf.getvalue()), (f"s{i}.cls", name.encode())):
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(path)


def test_suite_resumes_where_it_stopped(tmp_path, fixtures_dir):
    models = [ModelSpec(str(fixtures_dir / "openai_vit.pt")), ModelSpec(str(fixtures_dir / "openai_rn.pt"))]
    datasets = [
        DatasetSpec(_folder(tmp_path / "colors"), "zeroshot", options={"templates": "a {} square"}),
        DatasetSpec(_csv(tmp_path / "caps"), "retrieval"),
    ]
    runs = plan(models, datasets)
    assert [r.name() for r in runs] == [
        "colors_openai_vit.pt_kontrast_en_zeroshot_classification",
        "captions_openai_vit.pt_kontrast_en_zeroshot_retrieval",
        "colors_openai_rn.pt_kontrast_en_zeroshot_classification",
        "captions_openai_rn.pt_kontrast_en_zeroshot_retrieval",
    ]
    loads, events = [], []

    def load(name, pretrained=None):
        loads.append(name)
        return kontrast.load(name)

    def stop_after_two(what, run, record):
        events.append((what, run.name()))
        if what == "done" and len([e for e in events if e[0] == "done"]) == 2:
            raise KeyboardInterrupt  # the suite is killed after its second run

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_suite(runs, out, on_event=stop_after_two, load=load)
    assert loads == [models[0].name]
    events.clear()
    outcome = run_suite(runs, out, on_event=lambda w, r, rec: events.append((w, r.name())), load=load)
    assert outcome.skipped == [runs[0].name(), runs[1].name()] and len(outcome.done) == 2
    assert loads == [models[0].name, models[1].name]  # the finished model is not even loaded again
    for run in runs:
        cb = json.loads((out / f"{run.name()}.json").read_text())
        assert list(cb) == ["dataset", "model", "pretrained", "task", "metrics", "language"]
        assert (out / run.name() / "results.json").is_file()
    # a changed option is another run: recomputed, not skipped
    changed = plan(models[:1], [DatasetSpec(datasets[0].data, "zeroshot", options={"templates": "{}"})])
    assert run_suite(changed, out, load=load).done and loads[-1] == models[0].name


def test_dataset_resumes_at_its_first_unfinished_shard(tmp_path, fixtures_dir, monkeypatch):
    model, pre, tok = kontrast.load(fixtures_dir / "openai_vit.pt")
    shards = [_shard(tmp_path / f"part-{i}.tar", shade=40 * i) for i in range(2)]
    opts = ZeroShotOptions(templates="{}")
    run = RunOptions(cache_dir=tmp_path / "cache", batch_size=4)
    embedded = []
    real = features.embed_units

    def dies_after_first_unit(*args, **kwargs):
        for result in real(*args, **kwargs):
            embedded.append(result.unit)
            yield result
            raise KeyboardInterrupt  # killed after the first shard was saved

    monkeypatch.setattr(features, "embed_units", dies_after_first_unit)
    with pytest.raises(KeyboardInterrupt):
        evaluate("zeroshot", model, shards, opts, preprocess=pre, tokenizer=tok, run=run)
    assert embedded == [shards[0]]

    def counting(*args, **kwargs):
        for result in real(*args, **kwargs):
            embedded.append(result.unit)
            yield result

    monkeypatch.setattr(features, "embed_units", counting)
    resumed = evaluate("zeroshot", model, shards, opts, preprocess=pre, tokenizer=tok, run=run)
    assert embedded == [shards[0], shards[1]]  # only the second shard was embedded again
    fresh = evaluate("zeroshot", model, shards, opts, preprocess=pre, tokenizer=tok,
                     run=RunOptions(use_cache=False, batch_size=4))
    assert resumed["metrics"] == fresh["metrics"] and resumed["details"]["n_images"] == 12
    assert not list((tmp_path / "cache").glob("*.parts"))  # parts merged into one entry


def test_cli_several_models_and_datasets(tmp_path, fixtures_dir, capsys):
    colors = _folder(tmp_path / "colors")
    _csv(tmp_path / "caps")  # named in the benchmark file below
    argv = ["eval", "--model", str(fixtures_dir / "openai_vit.pt"), "default", "--task", "zeroshot", "--data",
            str(colors), "--templates", "a {} square", "--out", str(tmp_path / "out"), "--workers", "0"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 runs done, 0 skipped" in out
    assert main(argv) == 0 and "0 runs done, 2 skipped" in capsys.readouterr().out
    single = argv[:2] + [argv[2]] + argv[4:-4] + ["--out", str(tmp_path / "single"), "--workers", "0"]
    assert main(single) == 0 and (tmp_path / "single" / "results.json").is_file()
    capsys.readouterr()
    assert main(single) == 0  # a single run done before: its results shown again, nothing recomputed
    shown = capsys.readouterr()
    assert "done already" in shown.err and "top1" in shown.out
    bench = tmp_path / "bench.yaml"
    bench.write_text(
        f"models: [{fixtures_dir / 'openai_vit.pt'}]\n"
        f"datasets:\n  - {{data: colors, task: zeroshot, templates: 'a {{}} square'}}\n"
        f"  - {{data: caps/captions.csv, task: retrieval, name: my-captions}}\n"
        "recall_k: [1, 2]\n"
    )
    assert main(["eval", "--benchmark", str(bench), "--out", str(tmp_path / "b"), "--workers", "0"]) == 0
    ret = json.loads((tmp_path / "b" / "my-captions_openai_vit.pt_kontrast_en_zeroshot_retrieval.json").read_text())
    assert list(ret["metrics"]) == ["image_retrieval_recall@1", "text_retrieval_recall@1",
                                    "image_retrieval_recall@2", "text_retrieval_recall@2"]
    bench.write_text("models: [default]\ndatasets: [{data: colors, task: zeroshot, templatse: x}]\n")
    with pytest.raises(KontrastError, match="'templatse' is not an option of task zeroshot.*did you mean 'templates'"):
        read_benchmark(bench)
    capsys.readouterr()
    assert main(["eval", "--model", "default", "--data", str(colors)]) == 2  # --task auto on a plain folder
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--task auto needs a CLIP_benchmark dataset folder" in err
