"""Crash test: SIGKILL ``kontrast index`` mid-run, rerun, and the index equals one built in one go.

The run is made to stop at a known point without timing games: one CSV row points at a named pipe, so
the indexer blocks reading it after committing the units before it; the test waits for those commits,
kills the process, replaces the pipe by a real image, and reruns.
"""

from __future__ import annotations

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

import kontrast
from kontrast.search import ann
from kontrast.search.build import update_index
from kontrast.search.index import SearchIndex

REPO = Path(__file__).resolve().parents[1]


def _generation(folder: Path) -> int:
    db_path = folder / "index.sqlite"
    if not db_path.is_file():
        return -1
    try:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=1) as db:
            row = db.execute("SELECT value FROM info WHERE key = 'generation'").fetchone()
            return int(row[0]) if row else -1
    except sqlite3.Error:
        return -1


def _index_cmd(csv_path: Path, folder: Path, model: Path) -> list[str]:
    return [sys.executable, "-m", "kontrast", "index", str(csv_path), "--index", str(folder), "--model", str(model),
            "--workers", "0", "--commit-every", "8", "--batch-size", "8", "--checkpoint-seconds", "0", "--no-progress"]


def _contents(folder: Path) -> tuple[dict[int, str], dict[int, np.ndarray], dict[int, np.ndarray]]:
    """ids -> paths, and ids -> vectors from SQLite and from the FAISS index (after any recovery)."""
    index = SearchIndex(folder)
    paths = {r[0]: r[1] for r in index.store.db.execute("SELECT id, path FROM items")}
    stored = {r[0]: np.frombuffer(r[1], "<f4") for r in index.store.db.execute("SELECT id, image_vec FROM items")}
    loaded = index.ann("image")
    ids = ann.index_ids(loaded.index)
    faiss_vecs = dict(zip(ids.tolist(), ann.reconstruct(loaded.index, ids)))
    index.close()
    return paths, stored, faiss_vecs


def test_sigkill_mid_run_then_rerun_equals_one_go(tmp_path, data_dir, fixtures_dir):
    sample = data_dir / "emoji_sample"
    with open(sample / "captions.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    pipe = tmp_path / "blocking.png"
    os.mkfifo(pipe)
    csv_path = tmp_path / "images.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "caption"])
        for i, row in enumerate(rows):
            path = pipe.name if i == 100 else str(sample / row["filepath"])  # row 100 is in unit 12 (rows 96..103)
            writer.writerow([path, row["caption"]])
    model = fixtures_dir / "openai_vit.pt"
    folder = tmp_path / "idx"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(_index_cmd(csv_path, folder, model), cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while _generation(folder) < 12:  # units 0..11 committed, then blocked reading the pipe
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "indexer did not reach the pipe in time"
            time.sleep(0.05)
        time.sleep(0.3)
        assert proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert _generation(folder) == 12

    pipe.unlink()
    Image.new("RGB", (48, 48), (10, 120, 200)).save(pipe)  # the blocked row becomes a real image
    # a killed run's leftovers: the index is usable before the rerun
    paths, stored, faiss_vecs = _contents(folder)
    assert sorted(paths) == list(range(1, 97)) and sorted(faiss_vecs) == sorted(paths)

    rerun = subprocess.run(_index_cmd(csv_path, folder, model), check=False, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "+104 added" in rerun.stdout and "96 unchanged" in rerun.stdout
    one_go = tmp_path / "one_go"  # the same run, uninterrupted (in this process: same code, less start-up)
    m, preprocess, tokenizer = kontrast.load(str(model))
    update_index(one_go, [str(csv_path)], m, preprocess, tokenizer, str(model), batch_size=8, workers=0,
                 commit_every=8, checkpoint_seconds=0)

    paths, stored, faiss_vecs = _contents(folder)
    paths1, stored1, faiss_vecs1 = _contents(one_go)
    assert paths == paths1 and len(paths) == 200
    assert sorted(faiss_vecs) == sorted(faiss_vecs1) == sorted(paths)
    for i in paths:
        np.testing.assert_allclose(stored[i], stored1[i], atol=1e-6)
        np.testing.assert_allclose(faiss_vecs[i], faiss_vecs1[i], atol=1e-6)
        np.testing.assert_array_equal(faiss_vecs[i], stored[i])
    assert not [p for p in folder.iterdir() if ".tmp-" in p.name]
