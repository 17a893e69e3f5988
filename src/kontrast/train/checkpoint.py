"""Atomic training checkpoints: model, optimiser, schedule, step, RNG states and data position.

A checkpoint is written to a temporary file in the same folder, flushed and fsynced, then renamed
(``os.replace`` is atomic on POSIX), so a killed run leaves either the old or the new file, never a torn
one. ``latest`` finds the highest step; older checkpoints beyond ``keep`` are deleted.

Checkpoints hold only tensors and plain data (dicts, lists, tuples, numbers, strings; the RNG states
are stored in those forms too, the numpy one as a list of ints), so they are read with
``torch.load(weights_only=True)``: a file placed in ``checkpoints/`` or given to ``--resume`` cannot run
code, whatever it contains. The one extra type accepted is a numpy ``uint32`` array, which older kontrast
versions wrote for numpy's RNG state: it is rebuilt as data, never by calling anything from the file.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import KontrastError

CKPT_RE = re.compile(r"^step_(\d{8})\.pt$")
log = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    """The RNG states of torch (CPU, and every CUDA device when CUDA is available), Python and numpy,
    as tensors and plain data (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                             "numpy": {"kind": str(kind), "keys": [int(k) for k in keys], "pos": int(pos),
                                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = [t.cpu() for t in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore ``rng_state()``; the CUDA states only where the same number of devices is visible."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    if isinstance(n, dict):
        np.random.set_state((n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    else:  # older checkpoints: the tuple np.random.get_state() returns
        np.random.set_state(n)
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            log.warning("the checkpoint holds the CUDA RNG state of %d devices, this process sees %d: CUDA random "
                        "numbers will not continue the saved sequence", len(cuda), torch.cuda.device_count())


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


def _legacy_numpy_globals() -> list[Any]:
    """What an older checkpoint's numpy RNG state (a uint32 array) needs to be rebuilt as data."""
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A training checkpoint, read with ``weights_only=True`` (see the module docstring); one-line errors."""
    try:
        with torch.serialization.safe_globals(_legacy_numpy_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if "Unsupported" in ln or "GLOBAL" in ln]
        first = lines[0] if lines else type(exc).__name__
        raise KontrastError(f"{path} is not a kontrast training checkpoint: it holds objects other than tensors and "
                            f"plain data, which are never unpickled here because that could run code from the file "
                            f"({first[:160]}); resume from a checkpoint this run wrote") from None
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise KontrastError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict) or not {"step", "model", "model_config", "optimizer"} <= set(state):
        raise KontrastError(f"{path} is not a kontrast training checkpoint (no step/model/optimizer entries); "
                            "resume from a file in RUN_DIR/checkpoints")
    return state


# Fields that change how a run is operated, not what it computes: a resume may change them silently.
OPERATIONAL_FIELDS = frozenset({"workers", "threads", "log_every", "val_every", "save_every", "keep_checkpoints",
                                "tensorboard", "debug_step_sleep", "extra", "save_model", "device"})


def config_differences(saved: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """``"field: saved -> current"`` for every training field a resumed run changes (operational ones aside)."""
    if not saved:
        return []
    out = []
    for key in sorted(set(saved) | set(current)):
        if key in OPERATIONAL_FIELDS:
            continue
        old, new = saved.get(key), current.get(key)
        if old != new:
            out.append(f"{key}: {old!r} -> {new!r}")
    return out
