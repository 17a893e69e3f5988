"""Training curves from ``metrics.jsonl`` to a PNG (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import KontrastError
from .metrics import read_metrics

PANELS = [("loss", ["loss", "val_loss"]), ("learning rate", ["lr"]), ("logit scale", ["logit_scale"]),
          ("samples/s", ["samples_per_s"]), ("val recall", ["val_i2t_r1", "val_t2i_r1", "val_t2i_r5"])]


def plot_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Draw one panel per metric group; returns the PNG path (default ``RUN_DIR/curves.png``)."""
    records = read_metrics(run_dir)
    if not records:
        raise KontrastError(f"{Path(run_dir) / 'metrics.jsonl'} has no records yet")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise KontrastError("kontrast plot needs matplotlib: pip install matplotlib") from exc
    panels = [(title, [k for k in keys if any(k in r for r in records)]) for title, keys in PANELS]
    panels = [(t, ks) for t, ks in panels if ks]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.4 * len(panels)), sharex=True, squeeze=False)
    for ax, (title, keys) in zip(axes[:, 0], panels):
        for key in keys:
            pts = [(r["step"], r[key]) for r in records if key in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 30 else None, label=key)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    path = Path(out) if out else Path(run_dir) / "curves.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
