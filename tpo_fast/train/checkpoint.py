"""Atomic, resumable checkpoints.

Layout: ``<output_dir>/checkpoints/step-<N>/`` holding the DeepSpeed engine state (model,
optimizer, scheduler; ZeRO-partitioned as trained) under ``ds/``, ``trainer_state.json`` (the
step and data position), ``rng-rank<r>.pt`` per rank and the resolved ``config.yaml``. Everything
is written into ``.tmp-step-<N>`` first and renamed once every rank has finished, so a crash, a
full disk or a refused write never leaves a partial checkpoint that resume would pick, and the
previous checkpoints are removed (beyond ``run.keep_checkpoints``) only after the rename.

A checkpoint resumed on another cluster shape (its ZeRO partitions were cut for another number
of ranks) is converted once to DeepSpeed's universal format (``ds_to_universal``) into
``universal/`` beside ``ds/``, and loaded from there (``checkpoint.load_universal``).
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


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (disk full, permission, ...); the message names the folder
    and the previous checkpoint, which is left as it was."""


def save_checkpoint(engine, output_dir: Path, step: int, trainer_state: dict,
                    write_config, keep: int, rank: int) -> Path:
    """Collective: every rank calls it. ``write_config(path)`` writes the resolved config.

    A write that fails on this rank raises ``CheckpointWriteError`` here (after removing the
    partial folder on rank 0); the other ranks then fail in their next collective, and the
    launcher ends the job. Nothing already saved is touched before the new checkpoint is
    complete."""
    root = Path(output_dir) / "checkpoints"
    final, tmp = root / f"step-{step:06d}", root / f".tmp-step-{step:06d}"
    previous = list_checkpoints(output_dir)
    try:
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
    except OSError as exc:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # give the space back
        kept = f"the previous checkpoint {previous[-1]} is intact" if previous else \
            "no earlier checkpoint exists"
        raise CheckpointWriteError(
            exc.errno, f"writing the checkpoint of step {step} to {final} failed on rank {rank}: "
            f"{exc.strerror or exc} ({getattr(exc, 'filename', None) or tmp}); {kept}. Free "
            "space or fix the permissions, then run the same command to resume") from exc
    if rank == 0:
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def read_trainer_state(path: Path) -> dict:
    path = Path(path)
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no trainer_state.json)")
    return json.loads((path / "trainer_state.json").read_text())


def find_resume(resume: str, output_dir: Path) -> Path | None:
    """The checkpoint ``run.resume`` names: the newest in ``output_dir`` (``auto``), none
    (``never``, or nothing saved yet), or the given folder."""
    if resume == "never":
        return None
    if resume == "auto":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(f"run.resume={path} is not a checkpoint folder (no "
                                "trainer_state.json)")
    return path


def needs_universal(path: Path) -> bool:
    """Whether the checkpoint's optimizer state is partitioned over its ranks (ZeRO 1-3), so
    another number of ranks can only load it in the universal format."""
    return any(Path(path, "ds").glob("*optim_states.pt"))


def ensure_universal(path: Path, rank: int, device=None) -> str:
    """Collective: convert ``path/ds`` to ``path/universal`` once (rank 0; a partial conversion
    is never used); returns the tag to load."""
    path = Path(path)
    target = path / "universal"
    error = None
    if rank == 0 and not (target / "zero" / "optimizer_state.pt").is_file():
        import argparse
        import contextlib
        import io
        import sys

        from deepspeed.checkpoint import ds_to_universal

        tmp = path / ".tmp-universal"
        shutil.rmtree(tmp, ignore_errors=True)
        args = argparse.Namespace(input_folder=str(path / "ds"), output_folder=str(tmp),
                                  num_extract_workers=1, num_merge_workers=1,
                                  keep_temp_folder=False, strict=True,
                                  inject_missing_state=True)
        print(f"tpo-fast train: converting {path} to DeepSpeed's universal checkpoint "
              f"({target}) for another number of ranks", file=sys.stderr)
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                ds_to_universal.main(args)
            (path / "latest_universal").unlink(missing_ok=True)  # written by main(); unused
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        except Exception as exc:  # reported on every rank below
            shutil.rmtree(tmp, ignore_errors=True)
            error = f"{type(exc).__name__}: {exc}\n{log.getvalue()[-2000:]}"
    failed = torch.tensor([0.0 if error is None else 1.0], device=device)  # (NCCL: on GPU)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(failed)
    if failed.item():
        raise RuntimeError(f"converting {path} to a universal checkpoint failed"
                           + (f": {error}" if error else " on rank 0")
                           + "; resume on the number of ranks that wrote it instead")
    return "universal"


def load_checkpoint(engine, path: Path, rank: int, tag: str = "ds") -> dict:
    """Restore engine state (from ``path/<tag>``) and this rank's RNG; return the trainer
    state."""
    path = Path(path)
    state = read_trainer_state(path)
    load_path, _ = engine.load_checkpoint(str(path), tag=tag, load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint in {path / tag}")
    rng_file = path / f"rng-rank{rank}.pt"
    if rng_file.is_file():  # (a rank the checkpoint did not have keeps its seeded state)
        set_rng_state(torch.load(rng_file, weights_only=False))
    return state
