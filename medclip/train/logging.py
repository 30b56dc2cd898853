"""Run logs: a CSV of metrics, TensorBoard event files and a PNG loss curve (rank 0 only)."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

TRAIN_COLUMNS = ["step", "epoch", "loss", "lr", "logit_scale"]
VAL_COLUMNS = ["val_loss", "val_i2t_R@1", "val_i2t_R@5", "val_i2t_R@10", "val_t2i_R@1", "val_t2i_R@5",
               "val_t2i_R@10", "val_alignment", "val_uniformity_image", "val_uniformity_text", "val_chance_R@1",
               "val_chance_R@5", "val_chance_R@10"]


class MetricsLogger:
    """Append rows to ``<run>/metrics.csv`` and scalars to TensorBoard (``<run>/tensorboard``).

    Args:
        run_dir: the run folder.
        enabled: False on non-zero ranks (then every method is a no-op).
        tensorboard: also write TensorBoard event files.
    """

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.csv"
        self.enabled, self.writer = enabled, None
        if not enabled:
            return
        if not self.path.exists():
            with open(self.path, "w", newline="", encoding="utf-8") as f:
                csv.writer(f).writerow(TRAIN_COLUMNS + VAL_COLUMNS)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def log(self, row: dict) -> None:
        """Write one row (missing columns stay empty; unknown keys go to TensorBoard only)."""
        if not self.enabled:
            return
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow([_fmt(row.get(c)) for c in TRAIN_COLUMNS + VAL_COLUMNS])
        if self.writer is not None:
            for key, value in row.items():
                if key not in ("step", "epoch") and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(key.replace("val_", "val/"), value, row["step"])
            self.writer.flush()

    def truncate_after(self, step: int) -> None:
        """Drop rows after ``step`` (rows logged after the checkpoint a resumed run restarts from)."""
        if not self.enabled or not self.path.exists():
            return
        with open(self.path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        keep = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
        with open(self.path, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(keep)

    def close(self) -> None:
        """Flush TensorBoard."""
        if self.writer is not None:
            self.writer.close()


def _fmt(value) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def plot_loss_curve(csv_path: str | os.PathLike, png_path: str | os.PathLike) -> Path | None:
    """Training (and validation) loss against step, as a PNG; None when nothing was logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.read_csv(csv_path)
    if df.empty:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    train = df.dropna(subset=["loss"])
    ax.plot(train["step"], train["loss"], label="train loss")
    val = df.dropna(subset=["val_loss"])
    if not val.empty:
        ax.plot(val["step"], val["val_loss"], "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("contrastive loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return Path(png_path)
