"""The lent GPU machine's one command: every GPU check and benchmark, in order of value, each
under its own time cap inside one budget; results as JSON in ``$OUT``.

    bash benchmarks/gpu_suite.sh 540                 # on the machine: wheels, _C, every step
    bash benchmarks/gpu_suite.sh 170 --steps dali_tests video_gpu   # a later call (DALI)
    bash benchmarks/gpu_suite.sh 300 --dry-run       # here, on the CPU: every step's smoke form

Steps (name, cap in seconds; run in this order while the budget lasts):
  versions          15  python, torch, triton, transformers, deepspeed, DALI, flash-attn, Liger;
                        (where tpo_fast, tpo_fast.kernels and tpo_fast._C import from:
                        the JSON's "imports", probed before the steps)
  kernels           75  python -m benchmarks.kernels --n 2048 8192 16384 (H 3584, V 152064)
  kernel_tests      75  TPO_FAST_TEST_DEVICE=cuda pytest -n 8 on the kernel and loss tests
  gpu_tests         90  pytest -m gpu tests/
  train_throughput 120  python -m benchmarks.train_throughput --device cuda --frames 32 128
  packed_forward    45  python -m benchmarks.packed_forward
  long_video        60  python -m benchmarks.long_video --device cuda --layers 2
  dali_tests        90  pytest -k dali on the decoder tests          (only if DALI imports)
  video_gpu         90  python -m benchmarks.video --gpu             (only if DALI imports)
The first seven caps (``MAIN_STEPS``) add up to 480 s; with the set-up that gpu_suite.sh does
before (the kit's wheels, building _C: ``SETUP_ESTIMATE_S``) and the reserve they fit the
recommended budget of one call, ``CALL_BUDGET_S`` (540 s, under the device's 600 s a command;
the machine's start, ≈ 1-1.5 min, is device time outside the command). Every cap is wall time,
so Triton's and Inductor's compiles are inside it (their caches live under /tmp, kept while the
machine stays warm). The set-up's measured time (``GPU_SUITE_SETUP_S``) is taken off the budget.
A step gets min(its cap, what is left of the budget after a reserve for writing results); one
that would get under ``MIN_STEP_S`` (or its cap, if smaller) is skipped and recorded as such.
A step runs in its own process group; at its time cap the whole group is killed (torchrun's
workers included), so nothing of it holds the GPU for the next step.
``$OUT/gpu_suite.json`` is rewritten after every step: every step's command, time cap, wall
time, exit status and output tail, with the environment (device, versions, commit) and where
the project's modules imported from; the benchmarks write their own JSON beside it after every
arm or shape (at most 8 files come back from ``$OUT``).

``--dry-run`` (what CI runs, on a CPU, in a few minutes): the same step list, command
construction, budgeting and JSON writing, each step in its CPU form, under the budget alone
(no per-step caps): pytest steps collect only
(``--collect-only``: the paths and markers resolve), benchmarks run ``--smoke``; the DALI steps
run whether DALI imports or not. benchmarks/rehearse_gpu_suite.sh runs it the way the machine
does: a fresh clone, nothing installed, the image's packages and the kit's wheels.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIN_STEP_S = 15
RESERVE_S = 5
KILL_GRACE_S = 5  # SIGTERM to a timed-out step's process group, then SIGKILL
CALL_BUDGET_S = 540  # the recommended budget of the one call (the device runs a command <= 600 s)
SETUP_ESTIMATE_S = 45  # gpu_suite.sh before the steps: the kit's wheels (~53 MiB) and _C
MAIN_STEPS = ("versions", "kernels", "kernel_tests", "gpu_tests", "train_throughput",
              "packed_forward", "long_video")
KERNEL_TEST_WORKERS = 8  # xdist workers on the 16-core machine (one GPU, shared)
KERNEL_TESTS = ("tests/test_kernels_preference_loss.py", "tests/test_kernels_logprobs.py",
                "tests/test_loss_variants.py")
DALI_TESTS = ("tests/test_video_decode.py", "tests/test_decode_backends_paths.py")
VERSIONS = (
    "import importlib, platform, sys\n"
    "print('python', platform.python_version(), sys.executable)\n"
    "for m in ('torch', 'triton', 'transformers', 'deepspeed', 'nvidia.dali', 'flash_attn',"
    " 'liger_kernel', 'av', 'torchcodec'):\n"
    "    try:\n"
    "        print(m, getattr(importlib.import_module(m), '__version__', '?'))\n"
    "    except Exception as exc:\n"
    "        print(m, 'missing:', type(exc).__name__)\n"
    "import torch\n"
    "print('cuda', torch.version.cuda,\n"
    "      torch.cuda.is_available() and torch.cuda.get_device_name())\n"
)
# One probe of the suite's python before the steps: whether DALI imports (its steps run only
# then), whether pytest-xdist is there, and where the project's own modules import from: on the
# machine nothing is installed, so each must come from the clone (kernels/ through tpo_fast's
# mapping, _C built by gpu_suite.sh).
PROBE = (
    "import importlib, importlib.util, json\n"
    "out = {'xdist': importlib.util.find_spec('xdist') is not None, 'imports': {}}\n"
    "try:\n"
    "    import nvidia.dali\n"
    "    out['dali'] = True\n"
    "except Exception:\n"
    "    out['dali'] = False\n"
    "for m in ('tpo_fast', 'tpo_fast.kernels', 'tpo_fast._C'):\n"
    "    try:\n"
    "        out['imports'][m] = importlib.import_module(m).__file__\n"
    "    except Exception as exc:\n"
    "        out['imports'][m] = f'error: {type(exc).__name__}: {exc}'\n"
    "print(json.dumps(out))\n"
)


@dataclass
class Step:
    name: str
    cap_s: int
    argv: list[str]
    env: dict = field(default_factory=dict)
    needs_dali: bool = False
    result_file: str | None = None


def steps(out: Path, dry_run: bool, python: str, xdist: bool = True) -> list[Step]:
    """The suite's steps with their real (or, ``dry_run``, CPU smoke) commands; ``xdist``:
    whether pytest-xdist is there (the image has it) for the kernel tests' workers."""
    pytest = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    collect = ["--collect-only"] if dry_run else []
    smoke = ["--smoke"] if dry_run else []
    device = "cpu" if dry_run else "cuda"
    workers = ["-n", str(2 if dry_run else KERNEL_TEST_WORKERS)] if xdist else []

    def bench(module, *args, name):
        return [python, "-m", f"benchmarks.{module}", *(smoke or args), "--out",
                str(out / f"{name}.json")]

    return [
        Step("versions", 15, [python, "-c", VERSIONS]),
        Step("kernels", 75, bench("kernels", "--n", "2048", "8192", "16384", name="kernels"),
             result_file="kernels.json"),
        Step("kernel_tests", 75, [*pytest, *collect, *workers, "-m", "not gpu", *KERNEL_TESTS],
             env={"TPO_FAST_TEST_DEVICE": device}),
        Step("gpu_tests", 90, [*pytest, *collect, "-m", "gpu", "tests"]),
        Step("train_throughput", 120,
             bench("train_throughput", "--device", "cuda", "--frames", "32", "128",
                   name="train_throughput"), result_file="train_throughput.json"),
        Step("packed_forward", 45, bench("packed_forward", name="packed_forward"),
             result_file="packed_forward.json"),
        # one GPU: SP = 1 (tiled MLP off / on); the SP = 2 rows are recorded as skipped
        Step("long_video", 60, bench("long_video", "--device", "cuda", "--layers", "2",
                                     name="long_video"), result_file="long_video.json"),
        Step("dali_tests", 90, [*pytest, *collect, "-k", "dali", *DALI_TESTS], needs_dali=True),
        Step("video_gpu", 90, bench("video", "--gpu", name="video"), needs_dali=True,
             result_file="video.json"),
    ]


def probe(python: str) -> dict:
    """``PROBE``'s answer for ``python``: {"dali": bool, "xdist": bool, "imports": {...}}."""
    proc = subprocess.run([python, "-c", PROBE], cwd=ROOT, capture_output=True, text=True)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"dali": False, "xdist": False,
                "imports": {"error": (proc.stdout + proc.stderr)[-500:]}}


def step_timeout(cap_s: int, budget_s: float, elapsed_s: float) -> float:
    """What a step may take: its cap, or what the budget has left after the reserve."""
    return min(cap_s, budget_s - elapsed_s - RESERVE_S)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the step's whole process group (it was started in a session of its own), then,
    after ``KILL_GRACE_S``, SIGKILL whatever of the group is left (e.g. torchrun's workers)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_step(step: Step, timeout_s: float, log, out: Path) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **step.env)
    command = shlex.join([f"{k}={v}" for k, v in step.env.items()] + step.argv)
    log.write(f"\n===== {step.name} (cap {timeout_s:.0f} s): {command}\n")
    log.flush()
    start = time.monotonic()
    # the output goes to a file, not a pipe: what a killed step printed is kept
    capture = out / f".{step.name}.out"
    with open(capture, "w") as sink:
        proc = subprocess.Popen(step.argv, cwd=ROOT, env=env, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc, timed_out = proc.wait(timeout=timeout_s), False
        except subprocess.TimeoutExpired:
            kill_group(proc)
            rc, timed_out = None, True
    wall = time.monotonic() - start
    text = capture.read_text(errors="replace")
    capture.unlink()
    log.write(text)
    killed = " (timed out: process group killed)" if timed_out else ""
    log.write(f"----- {step.name}: rc {rc}{killed}, {wall:.1f} s\n")
    log.flush()
    return {"command": command, "timeout_s": timeout_s, "wall_s": wall, "returncode": rc,
            "timed_out": timed_out, "ok": rc == 0, "output_tail": text[-2000:]}


def write_summary(out: Path, summary: dict) -> None:
    tmp = out / ".gpu_suite.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(out / "gpu_suite.json")


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
    setup_s = float(os.environ.get("GPU_SUITE_SETUP_S", 0) or 0)  # gpu_suite.sh's, before us
    found = probe(python)
    plan = steps(out, args.dry_run, python, xdist=found["xdist"])
    names = [s.name for s in plan]
    if args.steps:
        unknown = sorted(set(args.steps) - set(names))
        if unknown:
            raise SystemExit(f"unknown steps {unknown}; choose from {names}")
        plan = [s for s in plan if s.name in args.steps]
    dali = found["dali"]
    start = time.monotonic()
    sys.path.insert(0, str(ROOT))
    from benchmarks.harness import environment

    summary = {"benchmark": "gpu_suite", "environment": environment(), "dry_run": args.dry_run,
               "budget_s": args.budget_s, "setup_s": setup_s, "wall_s": 0.0,
               "dali_importable": dali, "imports": found["imports"], "steps": {},
               "all_ok": False, "complete": False}
    results = summary["steps"]
    with open(out / "gpu_suite.log", "w") as log:
        for step in plan:
            elapsed = setup_s + time.monotonic() - start
            # dry run: no per-step caps (a CPU smoke form takes its own time; the caps are the
            # GPU's), only the budget
            timeout = step_timeout(args.budget_s if args.dry_run else step.cap_s, args.budget_s,
                                   elapsed)
            if step.needs_dali and not dali and not args.dry_run:
                results[step.name] = {"skipped": "nvidia.dali does not import (not carried?)"}
            elif timeout < min(MIN_STEP_S, step.cap_s):
                results[step.name] = {"skipped": f"budget: {max(timeout, 0):.0f} s left for it "
                                                 f"(< {min(MIN_STEP_S, step.cap_s)} s)"}
            else:
                results[step.name] = run_step(step, timeout, log, out)
                if step.result_file:
                    results[step.name]["result_file"] = step.result_file
                    results[step.name]["result_written"] = (out / step.result_file).exists()
            r = results[step.name]
            status = r.get("skipped") or ("ok" if r["ok"] else f"FAILED rc={r['returncode']}"
                                          + (" (timed out)" if r["timed_out"] else ""))
            print(f"{step.name:17s} {status}", flush=True)
            summary["wall_s"] = setup_s + time.monotonic() - start
            summary["all_ok"] = all(r.get("ok", False) for r in results.values()
                                    if "skipped" not in r)
            write_summary(out, summary)  # after every step: a killed call keeps what ran
    summary["complete"] = True
    summary["wall_s"] = setup_s + time.monotonic() - start
    write_summary(out, summary)
    print(f"wall {summary['wall_s']:.1f} s of {args.budget_s:.0f} (set-up {setup_s:.1f} s); "
          f"written to {out / 'gpu_suite.json'}")
    return 0 if summary["all_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
