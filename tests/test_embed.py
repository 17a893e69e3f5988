"""``kontrast embed``: per-unit shards, resume after SIGKILL, torchrun split, skipped files, CSV/folder sources."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import kontrast
from kontrast import embed as E
from kontrast.errors import KontrastError

N_SHARDS, PER_SHARD = 6, 20
PATTERN = "part-{000000..000005}.tar"
REPO = Path(__file__).resolve().parents[1]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def shards(data_dir, tmp_path_factory) -> Path:
    """Six small shards cut from the Google val_concepts shard; shard 2 also holds two broken samples."""
    root = tmp_path_factory.mktemp("shards")
    samples: list[list[tuple[str, bytes]]] = []
    with tarfile.open(data_dir / "emoji" / "emoji-google-val_concepts-000000.tar") as src:
        for member in src:
            key = member.name.split(".", 1)[0]
            if not samples or samples[-1][0][0].split(".")[0] != key:
                if len(samples) == N_SHARDS * PER_SHARD:
                    break
                samples.append([])
            samples[-1].append((member.name, src.extractfile(member).read()))
    for s in range(N_SHARDS):
        with tarfile.open(root / f"part-{s:06d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for i, sample in enumerate(samples[s * PER_SHARD: (s + 1) * PER_SHARD]):
                for name, data in sample:
                    _add(tar, name, data)
                if s == 2 and i == 5:
                    _add(tar, "broken_truncated.png", sample[0][1][:120])
                    _add(tar, "broken_truncated.txt", b"a truncated png")
                    _add(tar, "broken_text.png", b"this is a text file named .png\n")
    return root


@pytest.fixture(scope="module")
def model_path(fixtures_dir) -> str:
    return str(fixtures_dir / "openai_vit.pt")


@pytest.fixture(scope="module")
def loaded(model_path):
    return kontrast.load(model_path)


@pytest.fixture(scope="module")
def reference(shards, loaded, tmp_path_factory) -> Path:
    """An uninterrupted single-process run (library call), the oracle for the other runs."""
    model, preprocess, _ = loaded
    out = tmp_path_factory.mktemp("ref") / "emb"
    report = E.embed_collection(model, preprocess, str(shards / PATTERN), out, batch_size=4, dtype="float32")
    assert report.complete and report.units_done == N_SHARDS
    return out


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "kontrast", "embed", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}


def assert_same_output(out: Path, ref: Path) -> None:
    """Same unit files (embeddings, metadata, skipped) as the reference run: no duplicate, no missing row."""
    for name in sorted(p.name for p in ref.glob("unit-*")):
        if name.endswith(".done.json"):
            assert json.loads((out / name).read_text())["rows"] == json.loads((ref / name).read_text())["rows"]
        elif name.endswith(".npy"):
            np.testing.assert_allclose(np.load(out / name), np.load(ref / name), rtol=0, atol=1e-6)
        else:
            assert (out / name).read_bytes() == (ref / name).read_bytes() or name.endswith(".parquet"), name
    assert sorted(p.name for p in out.glob("unit-*")) == sorted(p.name for p in ref.glob("unit-*"))
    emb, metas = E.load_embeddings(out)
    ref_emb, ref_metas = E.load_embeddings(ref)
    assert metas == ref_metas
    np.testing.assert_allclose(emb, ref_emb, rtol=0, atol=1e-6)
    keys = [m["key"] for m in metas]
    assert len(keys) == len(set(keys)) == N_SHARDS * PER_SHARD
    assert (out / "skipped.jsonl").read_text() == (ref / "skipped.jsonl").read_text()
    manifest = json.loads((out / E.MANIFEST).read_text())
    assert manifest["status"] == "complete" and manifest["rows"] == N_SHARDS * PER_SHARD and manifest["skipped"] == 2


def test_reference_layout(reference, loaded, shards):
    model, preprocess, _ = loaded
    manifest = E.load_manifest(reference)
    assert manifest["model"]["fingerprint"] == kontrast.fingerprint(model)
    assert manifest["units_total"] == manifest["units_done"] == N_SHARDS
    assert manifest["dim"] == model.embed_dim and manifest["dtype"] == "float32" and manifest["kontrast_version"]
    assert len(manifest["source"]["units"]) == N_SHARDS and manifest["source"]["kind"] == "webdataset"
    emb, metas = E.load_embeddings(reference)
    assert emb.shape == (N_SHARDS * PER_SHARD, model.embed_dim) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert set(metas[0]) == {"key", "source", "caption", "width", "height", "meta"}
    assert metas[0]["key"].startswith("part-000000.tar/") and metas[0]["caption"].startswith("an emoji of")
    assert metas[0]["meta"]["style"] == "google" and max(metas[0]["width"], metas[0]["height"]) == 64
    # the rows are the images: re-embed one by hand
    with torch.no_grad():
        x = preprocess(Image.open(io.BytesIO(_member(shards, metas[7]["source"]))))[None]
        direct = model.encode_image(x, normalize=True)[0].numpy()
    np.testing.assert_allclose(emb[7], direct, atol=1e-6)
    skipped = [json.loads(line) for line in (reference / "skipped.jsonl").read_text().splitlines()]
    assert [s["key"] for s in skipped] == ["part-000002.tar/broken_truncated", "part-000002.tar/broken_text"]
    assert all(s["reason"] and s["source"].endswith(".png") for s in skipped)


def _member(shards: Path, source: str) -> bytes:
    shard, member = source.rsplit(":", 1)
    with tarfile.open(shard) as tar:
        return tar.extractfile(member).read()


def test_sigkill_and_resume_equals_uninterrupted(shards, reference, model_path, tmp_path):
    out = tmp_path / "emb"
    cmd = _cli(str(shards / PATTERN), "--out", str(out), "--model", model_path, "--batch-size", "4",
               "--dtype", "float32", "--no-progress")
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while not list(out.glob("unit-*.done.json")):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no unit finished in time"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    done_at_kill = len(list(out.glob("unit-*.done.json")))
    assert 1 <= done_at_kill < N_SHARDS, "the job was not killed mid-run"
    assert json.loads((out / E.MANIFEST).read_text())["status"] == "running"
    with pytest.raises(KontrastError, match="incomplete"):
        E.load_embeddings(out)
    _, partial = E.load_embeddings(out, allow_partial=True)
    assert 0 < len(partial) < N_SHARDS * PER_SHARD

    rerun = subprocess.run(cmd, check=False, env=_env(), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert "complete" in rerun.stdout and "2 skipped" in rerun.stdout
    assert not list(out.glob("*.tmp-*"))
    assert_same_output(out, reference)
    # a third run has nothing to do and changes nothing
    again = subprocess.run(cmd, check=False, env=_env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "nothing to do" in again.stderr
    assert_same_output(out, reference)


def test_torchrun_two_ranks_equals_single_process(shards, reference, model_path, tmp_path):
    out = tmp_path / "emb"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "kontrast",
           "embed", str(shards / PATTERN), "--out", str(out), "--model", model_path, "--batch-size", "4",
           "--dtype", "float32", "--no-progress"]
    proc = subprocess.run(cmd, check=False, env=_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = {json.loads(p.read_text())["rank"] for p in out.glob("unit-*.done.json")}
    assert ranks == {0, 1}
    assert json.loads((out / E.MANIFEST).read_text())["world_size"] == 2
    assert_same_output(out, reference)


def test_dataloader_workers_and_resume_checks(shards, reference, loaded, tmp_path, fixtures_dir):
    model, preprocess, _ = loaded
    out = tmp_path / "emb"
    E.embed_collection(model, preprocess, str(shards / PATTERN), out, batch_size=4, workers=2, dtype="float32")
    assert_same_output(out, reference)
    with pytest.raises(KontrastError, match="another model"):
        rn, rn_pre, _ = kontrast.load(fixtures_dir / "openai_rn.pt")
        E.embed_collection(rn, rn_pre, str(shards / PATTERN), out, dtype="float32")
    with pytest.raises(KontrastError, match="another source"):
        E.embed_collection(model, preprocess, str(shards / "part-00000[0-3].tar"), out, dtype="float32")
    with pytest.raises(KontrastError, match="--dtype"):
        E.embed_collection(model, preprocess, str(shards / PATTERN), out, dtype="float16")
    with pytest.raises(KontrastError, match="no unit files|holds unit files"):
        (out / E.MANIFEST).unlink()
        E.embed_collection(model, preprocess, str(shards / PATTERN), out)


def test_csv_source_with_text_bad_rows_and_csv_metadata(data_dir, loaded, tmp_path, monkeypatch):
    import csv

    from kontrast.data import sources

    model, preprocess, tokenizer = loaded
    monkeypatch.setattr(sources, "FOLDER_CHUNK", 8)
    monkeypatch.setattr(E, "_has_pyarrow", lambda: False)
    with open(data_dir / "emoji_sample" / "captions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:18]
    folder = tmp_path / "csv"
    folder.mkdir()
    for r in rows:
        (folder / r["filepath"]).write_bytes((data_dir / "emoji_sample" / r["filepath"]).read_bytes())
    (folder / "text.png").write_text("hello")
    rows[4:4] = [{"filepath": "text.png", "caption": "not an image"}, {"filepath": "gone.png", "caption": "missing"}]
    with open(folder / "captions.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["filepath", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "emb"
    report = E.embed_collection(model, preprocess, folder / "captions.csv", out, tokenizer=tokenizer, batch_size=3)
    assert report.complete and report.units_total == 3 and report.rows == 18 and report.skipped == 2
    assert sorted(p.suffix for p in out.glob("unit-000000.*")) == [".csv", ".json", ".jsonl", ".npy", ".npy"]
    emb, metas = E.load_embeddings(out)
    text, _ = E.load_embeddings(out, text=True)
    assert emb.shape == text.shape == (18, model.embed_dim)
    assert [m["key"] for m in metas] == [r["filepath"] for r in rows if r["filepath"] not in ("text.png", "gone.png")]
    with torch.no_grad():
        want = model.encode_text(tokenizer([m["caption"] for m in metas]), normalize=True).numpy()
    np.testing.assert_allclose(text, want, atol=2e-3)  # stored as float16 (the default)
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert [s["key"] for s in skipped] == ["text.png", "gone.png"]
    assert "not found" in skipped[1]["reason"] or "No such file" in skipped[1]["reason"]


def test_folder_source_skips_decompression_bombs(loaded, tmp_path, monkeypatch):
    model, preprocess, _ = loaded
    folder = tmp_path / "imgs" / "sub"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (40, 30), (60 * i, 10, 200)).save(folder / f"small{i}.png")
    Image.new("RGB", (400, 300), "white").save(folder / "huge.png")
    (folder / "short.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    out = tmp_path / "emb"
    report = E.embed_collection(model, preprocess, tmp_path / "imgs", out)
    assert report.complete and report.rows == 3 and report.skipped == 2
    _, metas = E.load_embeddings(out)
    assert [m["key"] for m in metas] == ["sub/small0.png", "sub/small1.png", "sub/small2.png"]
    assert metas[0]["meta"] == {"label": "sub"} and (metas[0]["width"], metas[0]["height"]) == (40, 30)
    reasons = {json.loads(x)["key"]: json.loads(x)["reason"] for x in (out / "skipped.jsonl").read_text().splitlines()}
    assert set(reasons) == {"sub/huge.png", "sub/short.jpg"} and "decompression bomb" in reasons["sub/huge.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(KontrastError, match="no images found"):
        E.embed_collection(model, preprocess, tmp_path / "empty", tmp_path / "emb2")
