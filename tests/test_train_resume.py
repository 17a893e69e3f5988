"""Training checkpoints are data, not code (issue 12 item 3), and a resume continues what was saved
(issue 11 item 4): weights_only loading, a crafted pickle refused without running, the schedule restored,
a warning for a changed config, and the CUDA RNG state saved (its structure tested on CPU)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch
from test_train import tiny_cfg

from kontrast.errors import KontrastError
from kontrast.train import checkpoint as ckpt_io
from kontrast.train.loop import Trainer

torch.set_num_threads(1)


def _run_two_steps(tmp_path: Path, data_dir: Path, **kw) -> Path:
    Trainer(tiny_cfg(tmp_path, data_dir, steps=2, save_every=1, keep_checkpoints=3, **kw)).run()
    return tmp_path / "run" / "checkpoints"


def test_checkpoints_load_with_weights_only(tmp_path: Path, data_dir: Path) -> None:
    folder = _run_two_steps(tmp_path, data_dir)
    state = torch.load(folder / "step_00000002.pt", map_location="cpu", weights_only=True)  # no extra globals
    assert state["step"] == 2 and isinstance(state["rng"]["numpy"]["keys"], list)
    assert set(state["schedule"]) == {"base_lr", "warmup", "total", "min_lr"}
    assert ckpt_io.load_checkpoint(folder / "step_00000002.pt")["step"] == 2


class _Payload:
    """Unpickling this runs ``os.system``: what a crafted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_crafted_checkpoint_does_not_run_code(tmp_path: Path, data_dir: Path, capsys) -> None:
    from kontrast.cli import main

    marker = tmp_path / "pwned"
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save({"step": 1, "model": {}, "model_config": {}, "optimizer": {}, "x": _Payload(marker)},
               folder / "step_00000009.pt")
    with pytest.raises(KontrastError, match="could run code"):
        Trainer(tiny_cfg(tmp_path, data_dir), resume="latest")
    assert not marker.exists()
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"model": "tiny-ViT", "train_data": str(data_dir / "emoji_sample" / "captions.csv"),
                                  "output": str(tmp_path / "run"), "batch_size": 8, "steps": 2, "precision": "fp32",
                                  "tensorboard": False}))
    code = main(["train", str(recipe), "--resume", str(folder / "step_00000009.pt")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "posix.system" in err and not marker.exists()


def test_resume_restores_the_schedule_and_warns_about_changes(tmp_path: Path, data_dir: Path, caplog) -> None:
    folder = _run_two_steps(tmp_path, data_dir, lr=1e-3, warmup=1)
    with caplog.at_level(logging.WARNING, logger="kontrast.train.loop"):
        same = Trainer(tiny_cfg(tmp_path, data_dir, steps=2, save_every=1, keep_checkpoints=3, lr=1e-3, warmup=1),
                       resume=str(folder / "step_00000001.pt"))
    assert same.step == 1 and "differs" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="kontrast.train.loop"):
        changed = Trainer(tiny_cfg(tmp_path, data_dir, steps=2, save_every=1, keep_checkpoints=3, lr=5e-3, warmup=1,
                                   workers=0, log_every=5), resume=str(folder / "step_00000001.pt"))
    assert "lr: 0.001 -> 0.005" in caplog.text and "log_every" not in caplog.text
    assert changed.schedule.base_lr == pytest.approx(1e-3)  # the saved schedule continues
    assert changed.schedule(1) == pytest.approx(same.schedule(1))


def test_cuda_rng_state_saved_and_restored(tmp_path: Path, monkeypatch, caplog) -> None:
    """With CUDA visible, the checkpoint keeps every device's RNG state and a resume sets them (faked on CPU)."""
    fake = [torch.arange(16, dtype=torch.uint8), torch.arange(16, 32, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [t.clone() for t in fake])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: restored.append([t.clone() for t in states]))
    state = {"step": 1, "model": {}, "model_config": {}, "optimizer": {}, "rng": ckpt_io.rng_state()}
    path = ckpt_io.save_checkpoint(state, tmp_path, 1)
    loaded = ckpt_io.load_checkpoint(path)
    assert [t.dtype for t in loaded["rng"]["cuda"]] == [torch.uint8, torch.uint8]
    ckpt_io.set_rng_state(loaded["rng"])
    assert len(restored) == 1 and all(torch.equal(a, b) for a, b in zip(restored[0], fake))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # fewer devices now: told, not silently wrong
    with caplog.at_level(logging.WARNING, logger="kontrast.train.checkpoint"):
        ckpt_io.set_rng_state(loaded["rng"])
    assert len(restored) == 1 and "2 devices, this process sees 1" in caplog.text
