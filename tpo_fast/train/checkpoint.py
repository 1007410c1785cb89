"""Atomic, resumable checkpoints.

Layout: ``<output_dir>/checkpoints/step-<N>/`` holding the DeepSpeed engine state (model,
optimizer, scheduler; ZeRO-partitioned as trained) under ``ds/``, ``trainer_state.json`` (the
step and data position), ``rng-rank<r>.pt`` per rank and the resolved ``config.yaml``. Everything
is written into ``.tmp-step-<N>`` first and renamed once every rank has finished, so a crash
never leaves a partial checkpoint that resume would pick.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

_STEP_DIR = re.compile(r"^step-(\d+)$")


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(output_dir: Path) -> list[Path]:
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _STEP_DIR.match(p.name)) and (p / "trainer_state.json").is_file()]
    return [p for _, p in sorted(found)]


def save_checkpoint(engine, output_dir: Path, step: int, trainer_state: dict,
                    write_config, keep: int, rank: int) -> Path:
    """Collective: every rank calls it. ``write_config(path)`` writes the resolved config."""
    root = Path(output_dir) / "checkpoints"
    final, tmp = root / f"step-{step:06d}", root / f".tmp-step-{step:06d}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    engine.save_checkpoint(str(tmp), tag="ds", save_latest=False)
    torch.save(rng_state(), tmp / f"rng-rank{rank}.pt")
    _barrier()
    if rank == 0:
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
        write_config(tmp / "config.yaml")
        shutil.rmtree(final, ignore_errors=True)  # a re-run of the same step
        os.replace(tmp, final)
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load_checkpoint(engine, path: Path, rank: int) -> dict:
    """Restore engine state and this rank's RNG; return the trainer state."""
    path = Path(path)
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no trainer_state.json)")
    load_path, _ = engine.load_checkpoint(str(path), tag="ds", load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint in {path}")
    rng_file = path / f"rng-rank{rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return json.loads((path / "trainer_state.json").read_text())
