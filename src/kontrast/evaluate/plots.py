"""PNG plots of evaluation results (matplotlib, Agg back end; imported only when a plot is drawn)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path.name


def plot_confusion(matrix: np.ndarray, names: Sequence[str], path: Path) -> str:
    """Row-normalised confusion matrix (true class down, predicted across); returns the file name."""
    plt = _pyplot()
    rows = matrix.sum(axis=1, keepdims=True)
    norm = matrix / np.maximum(rows, 1)  # [C, C], each row sums to 1 (or 0 for absent classes)
    n = len(names)
    size = min(4 + 0.28 * n, 18)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    short = [s if len(s) <= 24 else s[:22] + ".." for s in names]
    ax.set_xticklabels(short, rotation=90, fontsize=7)
    ax.set_yticklabels(short, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(
                        j,
                        i,
                        str(int(matrix[i, j])),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title("zero-shot confusion matrix (row-normalised)")
    return _save(fig, path)


def plot_recall_curves(curves: dict[str, dict[str, float]], path: Path) -> str:
    """Recall@k against k (log x) for both retrieval directions."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, curve in curves.items():
        ks = [int(k) for k in curve]
        ax.plot(ks, [curve[str(k)] for k in ks], marker="o", label=name.replace("_", " "))
    ax.set_xscale("log")
    ax.set_xlabel("k")
    ax.set_ylabel("recall@k")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("retrieval recall@k")
    return _save(fig, path)


def plot_c_sweep(sweep: Sequence[dict[str, float]], best: float, path: Path) -> str:
    """Validation accuracy against the regularisation C (log x)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    cs = [s["C"] for s in sweep]
    ax.plot(cs, [s["val_top1"] for s in sweep], marker="o")
    ax.axvline(best, color="tab:red", linestyle="--", label=f"best C = {best:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("C (inverse L2 strength)")
    ax.set_ylabel("validation top-1")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("linear probe: C sweep")
    return _save(fig, path)


def plot_k_shot(points: Sequence[dict[str, Any]], full: float, path: Path) -> str:
    """Test top-1 against examples per class, with the full-data probe as a line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot([p["k"] for p in points], [p["top1"] for p in points], marker="o", label="k-shot")
    ax.axhline(full, color="tab:green", linestyle="--", label=f"all data ({full:.3f})")
    ax.set_xscale("log", base=2)
    ax.set_xticks([p["k"] for p in points], [str(p["k"]) for p in points])
    ax.set_xlabel("examples per class")
    ax.set_ylabel("test top-1")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("linear probe: k-shot")
    return _save(fig, path)
