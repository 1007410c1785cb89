"""Per-step metrics: JSONL (always), TensorBoard (optional), a PNG plot at the end."""

from __future__ import annotations

import json
from pathlib import Path

PLOTTED = ("loss", "reward_accuracy", "reward_margin")


def _truncate(path: Path, resume_step: int) -> None:
    """Drop the lines of steps past the checkpoint a run resumes from."""
    if path.exists():
        kept = [line for line in path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= resume_step]
        path.write_text("".join(line + "\n" for line in kept))


class StepLog:
    """Rank 0 appends one JSON line per optimizer step (``{"step": N, ...}``) to ``path``; a
    resumed run continues it. ``data_order.jsonl``: the pairs (dataset indices: the valid pairs
    of data.train in file order) each step trained."""

    def __init__(self, path: Path, enabled: bool, resume_step: int = 0):
        self.path, self.enabled = Path(path), enabled
        if enabled:
            _truncate(self.path, resume_step)

    def log(self, step: int, values: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": step, **values}) + "\n")


class MetricsLog:
    """Rank 0 writes ``metrics.jsonl`` (appending, so a resumed run continues it) and, when
    enabled, TensorBoard events under ``tensorboard/``."""

    def __init__(self, output_dir: Path, enabled: bool, tensorboard: bool, resume_step: int = 0):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        _truncate(self.path, resume_step)  # drop lines past the checkpoint we resume from
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(Path(output_dir) / "tensorboard"),
                                            purge_step=resume_step + 1)
            except ImportError:  # tensorboard not installed: JSONL only
                self.writer = None

    def log(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.writer is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.writer.add_scalar(f"train/{k}", v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_metrics(metrics_path: Path, out_png: Path) -> Path | None:
    """Loss, reward accuracy and margin against the optimizer step, as one PNG."""
    rows = read_metrics(metrics_path)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(4 * len(PLOTTED), 3.2))
    steps = [r["step"] for r in rows]
    for ax, key in zip(axes, PLOTTED):
        ax.plot(steps, [r.get(key) for r in rows], marker="." if len(rows) < 50 else None)
        ax.set_title(key.replace("_", " "))
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
