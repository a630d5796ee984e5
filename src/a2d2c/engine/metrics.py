"""Per-epoch metrics: JSON lines, CSV and (optionally) TensorBoard, written by rank 0."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

__all__ = ["METRIC_FIELDS", "MetricsWriter"]

METRIC_FIELDS = ("epoch", "global_step", "lr", "temperature", "train_loss", "train_top1",
                 "val_loss", "val_top1", "val_top5", "epoch_time_s", "train_samples_per_s",
                 "ema_val_loss", "ema_val_top1", "ema_val_top5")


class MetricsWriter:
    """Appends one row per epoch to ``metrics.jsonl`` and ``metrics.csv`` in ``out_dir``."""

    def __init__(self, out_dir: str | Path, *, tensorboard: bool = False) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.out_dir / "metrics.jsonl"
        self.csv = self.out_dir / "metrics.csv"
        self.tb = None
        if tensorboard:
            from .._optional import require

            require("tensorboard", "train.tensorboard")
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(self.out_dir / "tensorboard"))

    def truncate_after(self, epoch: int) -> None:
        """Drop rows of epochs > ``epoch`` (a resumed run rewrites them)."""
        if not self.jsonl.is_file():
            self.csv.unlink(missing_ok=True)
            return
        rows = [json.loads(line) for line in self.jsonl.read_text().splitlines() if line]
        rows = [r for r in rows if r.get("epoch", 0) <= epoch]
        self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
        with open(self.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict[str, Any]) -> None:
        row = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
               for k, v in row.items()}
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        new = not self.csv.is_file()
        with open(self.csv, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_FIELDS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["epoch"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
