"""precision="auto": measured once per machine and model, cached, within 0.999 cosine of fp32, shown by info."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import kontrast
from kontrast import auto, cpu
from kontrast.cli import main as cli_main

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KONTRAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(auto, "MIN_SECONDS", 0.02)  # timing precision does not matter to these tests
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def vit_path(fixtures_dir):
    return fixtures_dir / "openai_vit.pt"


def test_auto_measures_once_and_picks_the_fastest_accurate_path(vit_path, cache, monkeypatch):
    model, preprocess, tokenizer = kontrast.load(vit_path, precision="auto")
    record = auto.read_choice(kontrast.fingerprint(model))
    assert record is not None and record["signature"] == cpu.signature()
    by_name = {m["name"]: m for m in record["candidates"]}
    assert set(by_name) == set(auto.CANDIDATES)
    if not cpu.native_bf16():
        assert "no native bf16" in by_name["bf16"]["note"]
    measured = [auto.Measurement(**m) for m in record["candidates"]]
    best = auto.choose(measured)
    assert record["choice"] == best.name
    assert best.name == "fp32" or min(best.min_cos_image, best.min_cos_text) >= auto.MIN_COSINE
    faster = [m for m in measured if m.eligible and m.seconds_per_item < best.seconds_per_item]
    assert not faster
    # the returned model is the chosen path, and it agrees with fp32 on real inputs
    fp32, _, _ = kontrast.load(vit_path)
    pixels, ids = auto.calibration_batch(preprocess, tokenizer)
    cosine = torch.nn.functional.cosine_similarity
    with torch.inference_mode():
        for ours, ref in ((model.encode_text(ids), fp32.encode_text(ids)), (model.encode_image(pixels), fp32.encode_image(pixels))):
            assert float(cosine(ours.float(), ref, dim=-1).min()) >= auto.MIN_COSINE
    assert (record["choice"].startswith("onnx")) == (getattr(model, "backend", "torch") == "onnx")

    # a second load reads the cache instead of measuring again
    def no_measuring(*args, **kwargs):
        raise AssertionError("measured again although the choice was cached")

    monkeypatch.setattr(auto, "measure", no_measuring)
    again, _, _ = kontrast.load(vit_path, precision="auto")
    assert type(again) is type(model)


def test_auto_cache_is_per_cpu_signature(vit_path, cache):
    """A narrower CPU (here: oneDNN limited to AVX2) is another machine: it measures its own choice."""
    kontrast.load(vit_path, precision="auto")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    script = ("import json, kontrast; from kontrast import auto; "
              f"m, _, _ = kontrast.load({str(vit_path)!r}, precision='auto'); "
              "print(json.dumps(auto.read_choice(kontrast.fingerprint(m))))")
    proc = subprocess.run([sys.executable, "-c", script], check=False, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    narrow = json.loads(proc.stdout.strip().splitlines()[-1])
    assert narrow["signature"] != cpu.signature()
    assert len(list((cache / "auto").glob("*.json"))) == 2
    bf16 = next(m for m in narrow["candidates"] if m["name"] == "bf16")
    assert "no native bf16" in bf16["note"]


def test_auto_keeps_to_pytorch_when_asked(vit_path, cache):
    model, preprocess, tokenizer = kontrast.load(vit_path)
    chosen, record = auto.select(model, preprocess, tokenizer, backends=("torch",))
    assert record["choice"] in ("fp32", "bf16")
    assert all("not allowed" in m["note"] for m in record["candidates"] if m["name"].startswith("onnx"))
    assert isinstance(chosen, kontrast.CLIP)


def test_info_reports_the_choice(vit_path, cache, capsys):
    assert cli_main(["info", str(vit_path)]) == 0
    assert "not measured on this machine yet" in capsys.readouterr().out
    assert cli_main(["info", str(vit_path), "--precision", "auto"]) == 0
    out = capsys.readouterr().out
    assert "precision auto on this machine" in out and "min cosine" in out
    assert cli_main(["info", str(vit_path)]) == 0  # now read from the cache
    assert "precision auto on this machine" in capsys.readouterr().out


def test_cli_accepts_precision_auto(vit_path, cache, data_dir, capsys):
    image = next((data_dir / "emoji_sample").glob("*.png"))
    assert cli_main(["classify", str(image), "--labels", "cat", "dog", "--model", str(vit_path),
                     "--precision", "auto", "--json"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["labels"] and len(line["scores"]) == len(line["labels"])
