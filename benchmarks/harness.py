"""The one benchmark harness: timing with quantiles, the environment, JSON results.

Every script in benchmarks/ times with ``timed`` and writes with ``write_result``, so results
carry the device, package versions, commit and the exact command that produced them. Scripts
write after every arm or shape (``"complete": false`` until the last), so a run killed at its
time cap keeps what it measured, and record a variant's exception with ``failure`` instead of
losing the other variants.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
_PACKAGES = ("torch", "triton", "numpy", "transformers", "deepspeed", "nvidia-dali-cuda130",
             "flash-attn", "liger-kernel", "tpo-fast")


def _cuda_sync() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], *, reps: int = 5, warmup: int = 1) -> dict:
    """Wall time of ``fn()`` over ``reps`` runs after ``warmup`` runs: median, p20, p80, min
    (seconds). CUDA work is synchronised before each clock read."""
    return timed_after(lambda: None, lambda _: fn(), reps=reps, warmup=warmup)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name() -> str:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU: {_cpu_name()} ({os.cpu_count()} cores)"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=RESULTS.parent, capture_output=True, text=True,
                             check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def environment() -> dict:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "device": device_name(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "commit": _git("rev-parse", "HEAD"),
        "dirty": bool(status) if status is not None else None,
        "command": shlex.join(["python", "-m", _module_name(), *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _module_name() -> str:
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None else Path(sys.argv[0]).stem


def write_result(name: str, payload: dict, out: str | Path | None = None) -> Path:
    """Write ``{"environment": ..., **payload}`` to ``out`` or
    ``benchmarks/results/<name>-<device>.json``."""
    env = environment()
    if out is None:
        slug = re.sub(r"[^a-z0-9]+", "-", env["device"].lower()).strip("-")[:60]
        out = RESULTS / f"{name}-{slug}.json"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": name, "environment": env, **payload}, indent=2) + "\n")
    return out


def failure(exc: BaseException) -> dict:
    """A variant's, arm's or shape's exception as a result entry, so the others are kept:
    ``{"error": "out of memory: ..."}`` or ``{"error": "TypeError: ..."}``."""
    torch = sys.modules.get("torch")
    text = str(exc).splitlines()[0] if str(exc) else ""
    if torch is not None and isinstance(exc, torch.OutOfMemoryError):
        return {"error": f"out of memory: {text}"[:300]}
    return {"error": f"{type(exc).__name__}: {text}"[:300]}


def timed_after(setup: Callable[[], object], fn: Callable[[object], object], *, reps: int = 5,
                warmup: int = 1) -> dict:
    """Like ``timed``, but each run first calls ``setup()`` untimed and then times
    ``fn(setup())`` (e.g. a backward pass after its forward)."""
    if reps < 1:
        raise ValueError("reps must be >= 1")
    for _ in range(warmup):
        fn(setup())
    times = []
    for _ in range(reps):
        state = setup()
        _cuda_sync()
        start = time.perf_counter()
        fn(state)
        _cuda_sync()
        times.append(time.perf_counter() - start)
    times.sort()

    def q(f: float) -> float:
        return times[min(len(times) - 1, round(f * (len(times) - 1)))]

    return {"median_s": statistics.median(times), "p20_s": q(0.2), "p80_s": q(0.8),
            "min_s": times[0], "reps": reps}


def peak_extra_memory(fn: Callable[[], object], *, exclude_bytes: int = 0) -> int | None:
    """Peak CUDA memory allocated while ``fn()`` runs, above what was allocated before it,
    minus ``exclude_bytes`` (e.g. the gradients it returns); None without CUDA."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before - exclude_bytes
