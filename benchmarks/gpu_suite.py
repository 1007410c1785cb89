"""The lent GPU machine's one command: every GPU check and benchmark, in order of value, each
under its own time cap inside one budget; results as JSON in ``$OUT``.

    bash benchmarks/gpu_suite.sh 480                 # on the machine: wheels, then every step
    python3 -m benchmarks.gpu_suite 170 --steps dali_tests video_gpu   # a later call (DALI)
    python -m benchmarks.gpu_suite 120 --dry-run     # here, on the CPU: every step's smoke form

Steps (name, cap in seconds; run in this order while the budget lasts):
  versions          30  python, torch, triton, transformers, deepspeed, DALI, flash-attn, Liger;
                        nvidia-smi
  gpu_tests        100  pytest -m gpu tests/
  kernel_tests      90  TPO_FAST_TEST_DEVICE=cuda pytest on the kernel and loss tests (not -m gpu)
  kernels           90  python -m benchmarks.kernels --n 2048 8192 16384 (H 3584, V 152064)
  packed_forward    60  python -m benchmarks.packed_forward
  train_throughput 150  python -m benchmarks.train_throughput --device cuda --frames 32 128
  dali_tests        90  pytest -k dali on the decoder tests          (only if DALI imports)
  video_gpu         90  python -m benchmarks.video --gpu             (only if DALI imports)
A step gets min(its cap, what is left of the budget after a reserve for writing results); one
that would get under ``MIN_STEP_S`` (or its cap, if smaller) is skipped and recorded as such.
``$OUT/gpu_suite.json`` holds every step's command, time cap, wall time, exit status and output
tail, with the environment (device, versions, commit); the benchmarks write their own JSON
beside it (at most 8 files come back from ``$OUT``: suite JSON, its log and four benchmark
files).

``--dry-run`` (what CI runs, on a CPU, in about a minute): the same step list, command
construction, budgeting and JSON writing, each step in its CPU form: pytest steps collect only
(``--collect-only``: the paths and markers resolve), benchmarks run ``--smoke``; the DALI steps
run whether DALI imports or not.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIN_STEP_S = 15
RESERVE_S = 5
KERNEL_TESTS = ("tests/test_kernels_preference_loss.py", "tests/test_kernels_logprobs.py",
                "tests/test_loss_variants.py")
DALI_TESTS = ("tests/test_video_decode.py", "tests/test_decode_backends_paths.py")
VERSIONS = (
    "import importlib, platform, sys\n"
    "print('python', platform.python_version())\n"
    "for m in ('torch', 'triton', 'transformers', 'deepspeed', 'nvidia.dali', 'flash_attn',"
    " 'liger_kernel', 'av'):\n"
    "    try:\n"
    "        print(m, getattr(importlib.import_module(m), '__version__', '?'))\n"
    "    except Exception as exc:\n"
    "        print(m, 'missing:', type(exc).__name__)\n"
    "import torch\n"
    "print('cuda', torch.version.cuda,\n"
    "      torch.cuda.is_available() and torch.cuda.get_device_name())\n"
)


@dataclass
class Step:
    name: str
    cap_s: int
    argv: list[str]
    env: dict = field(default_factory=dict)
    needs_dali: bool = False
    result_file: str | None = None


def steps(out: Path, dry_run: bool, python: str) -> list[Step]:
    """The suite's steps with their real (or, ``dry_run``, CPU smoke) commands."""
    pytest = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    collect = ["--collect-only"] if dry_run else []
    smoke = ["--smoke"] if dry_run else []
    device = "cpu" if dry_run else "cuda"

    def bench(module, *args, name):
        return [python, "-m", f"benchmarks.{module}", *(smoke or args), "--out",
                str(out / f"{name}.json")]

    return [
        Step("versions", 30, [python, "-c", VERSIONS]),
        Step("gpu_tests", 100, [*pytest, *collect, "-m", "gpu", "tests"]),
        Step("kernel_tests", 90, [*pytest, *collect, "-m", "not gpu", *KERNEL_TESTS],
             env={"TPO_FAST_TEST_DEVICE": device}),
        Step("kernels", 90, bench("kernels", "--n", "2048", "8192", "16384", name="kernels"),
             result_file="kernels.json"),
        Step("packed_forward", 60, bench("packed_forward", name="packed_forward"),
             result_file="packed_forward.json"),
        Step("train_throughput", 150,
             bench("train_throughput", "--device", "cuda", "--frames", "32", "128",
                   name="train_throughput"), result_file="train_throughput.json"),
        # one GPU: SP = 1 (tiled MLP off / on); the SP = 2 rows are recorded as skipped
        Step("long_video", 75, bench("long_video", "--device", "cuda", "--layers", "2",
                                     name="long_video"), result_file="long_video.json"),
        Step("dali_tests", 90, [*pytest, *collect, "-k", "dali", *DALI_TESTS], needs_dali=True),
        Step("video_gpu", 90, bench("video", "--gpu", name="video"), needs_dali=True,
             result_file="video.json"),
    ]


def dali_importable(python: str) -> bool:
    probe = subprocess.run([python, "-c", "import nvidia.dali"], capture_output=True)
    return probe.returncode == 0


def step_timeout(cap_s: int, budget_s: float, elapsed_s: float) -> float:
    """What a step may take: its cap, or what the budget has left after the reserve."""
    return min(cap_s, budget_s - elapsed_s - RESERVE_S)


def run_step(step: Step, timeout_s: float, log) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **step.env)
    command = shlex.join([f"{k}={v}" for k, v in step.env.items()] + step.argv)
    log.write(f"\n===== {step.name} (cap {timeout_s:.0f} s): {command}\n")
    log.flush()
    start = time.monotonic()
    try:
        proc = subprocess.run(step.argv, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout_s)
        rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
        timed_out = False
    except subprocess.TimeoutExpired as exc:
        rc, timed_out = None, True
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
    wall = time.monotonic() - start
    log.write(stdout + stderr)
    log.write(f"----- {step.name}: rc {rc}{' (timed out)' if timed_out else ''}, {wall:.1f} s\n")
    log.flush()
    tail = (stdout + stderr)[-2000:]
    return {"command": command, "timeout_s": timeout_s, "wall_s": wall, "returncode": rc,
            "timed_out": timed_out, "ok": rc == 0, "output_tail": tail}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("budget_s", type=float, help="seconds for the whole suite")
    ap.add_argument("--dry-run", action="store_true", help="CPU smoke form of every step")
    ap.add_argument("--steps", nargs="+", help="run only these steps (in suite order)")
    ap.add_argument("--out-dir", default=os.environ.get("OUT"),
                    help="where results go (default: $OUT)")
    args = ap.parse_args(argv)
    if not args.out_dir:
        raise SystemExit("no --out-dir and no $OUT")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    plan = steps(out, args.dry_run, python)
    names = [s.name for s in plan]
    if args.steps:
        unknown = sorted(set(args.steps) - set(names))
        if unknown:
            raise SystemExit(f"unknown steps {unknown}; choose from {names}")
        plan = [s for s in plan if s.name in args.steps]
    dali = dali_importable(python)
    start = time.monotonic()
    results = {}
    with open(out / "gpu_suite.log", "w") as log:
        for step in plan:
            elapsed = time.monotonic() - start
            timeout = step_timeout(step.cap_s, args.budget_s, elapsed)
            if step.needs_dali and not dali and not args.dry_run:
                results[step.name] = {"skipped": "nvidia.dali does not import (not carried?)"}
            elif timeout < min(MIN_STEP_S, step.cap_s):
                results[step.name] = {"skipped": f"budget: {max(timeout, 0):.0f} s left for it "
                                                 f"(< {min(MIN_STEP_S, step.cap_s)} s)"}
            else:
                results[step.name] = run_step(step, timeout, log)
                if step.result_file:
                    results[step.name]["result_file"] = step.result_file
                    results[step.name]["result_written"] = (out / step.result_file).exists()
            r = results[step.name]
            status = r.get("skipped") or ("ok" if r["ok"] else f"FAILED rc={r['returncode']}"
                                          + (" (timed out)" if r["timed_out"] else ""))
            print(f"{step.name:17s} {status}", flush=True)
    sys.path.insert(0, str(ROOT))
    from benchmarks.harness import environment

    summary = {"benchmark": "gpu_suite", "environment": environment(), "dry_run": args.dry_run,
               "budget_s": args.budget_s, "wall_s": time.monotonic() - start,
               "dali_importable": dali, "steps": results,
               "all_ok": all(r.get("ok", False) for r in results.values() if "skipped" not in r)}
    (out / "gpu_suite.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wall {summary['wall_s']:.1f} s of {args.budget_s:.0f}; written to "
          f"{out / 'gpu_suite.json'}")
    return 0 if summary["all_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
