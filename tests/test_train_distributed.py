"""torchrun (2 processes, gloo) equals one process on the same global batch; kill-and-resume is exact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    return env


def _args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", "tiny-ViT", "--train-data", str(data_dir / "emoji_sample" / "captions.csv"),
            "--batch-size", "8", "--lr", "0.001", "--warmup", "1", "--precision", "fp32", "--threads", "1",
            "--log-every", "1", "--tensorboard", "false", "--workers", "0", "--output", str(out), "--quiet", *extra]


def _losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


@pytest.mark.parametrize("mode", [[], ["--local-loss", "true", "--gather-with-grad", "true"], ["--loss", "siglip"]],
                         ids=["default", "local+grad", "siglip"])
def test_torchrun_two_processes_match_one_process(tmp_path: Path, data_dir: Path, mode: list[str]) -> None:
    # Adam's first steps divide a gradient by its own magnitude: for near-zero gradients (rare token
    # embeddings) float summation-order noise (~1e-9) would be amplified to a full lr-sized update; a
    # larger eps keeps the comparison about the distributed maths, not about that amplification.
    common = ["--steps", "3", "--eps", "1e-3", *mode]
    single = tmp_path / "single"
    subprocess.run([sys.executable, "-m", "kontrast.train", *_args(data_dir, single, *common, "--save-model", str(single / "m"))],
                   check=True, env=_env(), timeout=300)
    multi = tmp_path / "multi"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
                    "kontrast.train", *_args(data_dir, multi, *common, "--save-model", str(multi / "m"))],
                   check=True, env=_env(), timeout=300)
    one, two = _losses(single), _losses(multi)
    assert [s for s, _ in one] == [s for s, _ in two] == [1, 2, 3]
    for (_, a), (_, b) in zip(one, two):
        assert abs(a - b) < 1e-5
    assert json.loads((multi / "config.json").read_text())["world_size"] == 2
    w1, w2 = load_file(str(single / "m" / "kontrast_model.safetensors")), load_file(str(multi / "m" / "kontrast_model.safetensors"))
    assert w1.keys() == w2.keys()
    for key in w1:
        assert torch.allclose(w1[key], w2[key], atol=1e-5, rtol=0), key


def test_kill_and_resume_gives_the_uninterrupted_loss_curve(tmp_path: Path, data_dir: Path) -> None:
    common = ["--steps", "8", "--save-every", "2", "--keep-checkpoints", "2"]
    full = tmp_path / "full"
    subprocess.run([sys.executable, "-m", "kontrast.train", *_args(data_dir, full, *common)], check=True, env=_env(), timeout=300)
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "kontrast.train", *_args(data_dir, run, *common)]
    proc = subprocess.Popen(cmd + ["--debug-step-sleep", "0.5"], env=_env())
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:
        steps = [s for s, _ in _losses(run)] if metrics.exists() else []
        if steps and max(steps) >= 5:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done = [s for s, _ in _losses(run)]
    assert max(done) < 8, "the run finished before it was killed"
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("step_*.pt"))
    assert ckpts and not list((run / "checkpoints").glob(".*tmp*"))
    subprocess.run(cmd + ["--resume", "latest"], check=True, env=_env(), timeout=300)
    resumed, reference = _losses(run), _losses(full)
    assert [s for s, _ in resumed] == list(range(1, 9))
    for (_, a), (_, b) in zip(resumed, reference):
        assert abs(a - b) < 1e-6
