"""Atomic training checkpoints: model, optimiser, schedule, step, RNG states and data position.

A checkpoint is written to a temporary file in the same folder, flushed and fsynced, then renamed
(``os.replace`` is atomic on POSIX), so a killed run leaves either the old or the new file, never a torn
one. ``latest`` finds the highest step; older checkpoints beyond ``keep`` are deleted.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import KontrastError

CKPT_RE = re.compile(r"^step_(\d{8})\.pt$")


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def list_checkpoints(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), folder / name) for name in os.listdir(folder) if (m := CKPT_RE.match(name))]
    return sorted(found)


def save_checkpoint(state: dict[str, Any], folder: str | os.PathLike, step: int, keep: int = 2) -> Path:
    """Write ``state`` as ``step_XXXXXXXX.pt`` atomically; keep the newest ``keep`` checkpoints."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step:08d}.pt"
    tmp = folder / f".{path.name}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if keep > 0:
        for _, old in list_checkpoints(folder)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def resolve_resume(resume: str, run_dir: str | os.PathLike) -> Path:
    """``latest`` -> newest checkpoint of the run; otherwise a checkpoint file path."""
    if resume == "latest":
        found = list_checkpoints(Path(run_dir) / "checkpoints")
        if not found:
            raise KontrastError(f"--resume latest: no checkpoint in {Path(run_dir) / 'checkpoints'}; start without --resume")
        return found[-1][1]
    path = Path(resume)
    if not path.is_file():
        raise KontrastError(f"--resume: checkpoint not found: {path}")
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise KontrastError(f"cannot read checkpoint {path}: {exc}") from exc
