"""benchmarks/gpu_suite.py: the real commands (what the lent machine runs), the budgeting, and
the CPU dry run end to end (every step in its smoke form; CI runs it so the suite cannot rot)."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT

from benchmarks import gpu_suite

NO_PROBE = {"dali": False, "xdist": False, "imports": {}}  # tests of the loop, not the python


def test_real_commands(tmp_path):
    plan = {s.name: s for s in gpu_suite.steps(tmp_path, dry_run=False, python="python3")}
    # the kernel benchmark before the long test steps; the DALI steps (a later call) last
    assert list(plan) == ["versions", "kernels", "kernel_tests", "gpu_tests", "train_throughput",
                          "packed_forward", "long_video", "dali_tests", "video_gpu"]
    assert list(plan)[:7] == list(gpu_suite.MAIN_STEPS)
    assert plan["gpu_tests"].argv[-3:] == ["-m", "gpu", "tests"]
    assert plan["kernel_tests"].env == {"TPO_FAST_TEST_DEVICE": "cuda"}
    assert set(gpu_suite.KERNEL_TESTS) <= set(plan["kernel_tests"].argv)
    kt = plan["kernel_tests"].argv
    assert kt[kt.index("-n") + 1] == str(gpu_suite.KERNEL_TEST_WORKERS)  # xdist workers
    assert "-n" not in gpu_suite.steps(tmp_path, False, "python3", xdist=False)[2].argv
    assert all((ROOT / t).is_file() for t in gpu_suite.KERNEL_TESTS + gpu_suite.DALI_TESTS)
    kernels = plan["kernels"].argv
    assert kernels[kernels.index("--n") + 1:kernels.index("--out")] == ["2048", "8192", "16384"]
    tt = plan["train_throughput"].argv
    assert tt[tt.index("--device") + 1] == "cuda" and tt[tt.index("--frames") + 1:][:2] == [
        "32", "128"]
    lv = plan["long_video"].argv
    assert lv[lv.index("--device") + 1] == "cuda"
    assert plan["video_gpu"].needs_dali and "--gpu" in plan["video_gpu"].argv
    for step in plan.values():
        assert "--smoke" not in step.argv and "--collect-only" not in step.argv, step.name
        if step.result_file:
            assert step.argv[-1] == str(tmp_path / step.result_file), step.name
    # the one call: set-up (wheels, _C), every main step at its cap and the reserve fit the
    # recommended budget, which fits the device's 600 s a command
    main = sum(plan[name].cap_s for name in gpu_suite.MAIN_STEPS)
    assert gpu_suite.SETUP_ESTIMATE_S + main + gpu_suite.RESERVE_S <= gpu_suite.CALL_BUDGET_S
    assert gpu_suite.CALL_BUDGET_S <= 600 - 30
    assert plan["dali_tests"].cap_s + plan["video_gpu"].cap_s <= 180  # the DALI call


def test_budget_caps_and_skips(tmp_path, monkeypatch):
    # the loop, not the python: the probe's own subprocess is the bare-copy test's below
    monkeypatch.setattr(gpu_suite, "probe", lambda python: NO_PROBE)
    assert gpu_suite.step_timeout(90, 480, 0) == 90
    assert gpu_suite.step_timeout(90, 480, 400) == 480 - 400 - gpu_suite.RESERVE_S
    # a budget too small for any step: every step is skipped and the JSON still written
    assert gpu_suite.main(["19", "--dry-run", "--out-dir", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert all("budget" in r["skipped"] for r in summary["steps"].values())
    with pytest.raises(SystemExit, match="unknown steps"):
        gpu_suite.main(["10", "--steps", "nope", "--out-dir", str(tmp_path)])


def test_setup_time_counts_against_the_budget(tmp_path, monkeypatch):
    """gpu_suite.sh's set-up (wheels, _C) is taken off the budget: 40 s of a 58 s budget leave
    13 s after the reserve, under MIN_STEP_S, so the versions step (cap 15) is skipped."""
    monkeypatch.setenv("GPU_SUITE_SETUP_S", "40")
    monkeypatch.setattr(gpu_suite, "probe", lambda python: NO_PROBE)
    assert gpu_suite.main(["58", "--dry-run", "--steps", "versions", "--out-dir",
                           str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert summary["setup_s"] == 40 and "budget" in summary["steps"]["versions"]["skipped"]
    assert summary["complete"] and summary["wall_s"] >= 40


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_a_timed_out_step_loses_its_whole_process_group(tmp_path):
    """A step whose child (as torchrun's workers) outlives the timeout: the whole group goes,
    and what the step printed before is kept."""
    pid_file = tmp_path / "child.pid"
    code = ("import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
            "print('started', flush=True)\n"
            "time.sleep(120)\n")
    step = gpu_suite.Step("sleepy", 60, [sys.executable, "-c", code])
    with open(tmp_path / "log", "w") as log:
        result = gpu_suite.run_step(step, 3, log, tmp_path)
    assert result["timed_out"] and result["returncode"] is None and not result["ok"]
    assert "started" in result["output_tail"]
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child)


def test_the_json_is_written_after_every_step(tmp_path, monkeypatch):
    """A suite killed after its first step still leaves that step's result in the JSON."""
    seen = []
    real = gpu_suite.run_step

    def run_then_look(step, timeout, log, out):
        if seen:  # the second step: what is on disk now holds the first
            seen.append(json.loads((out / "gpu_suite.json").read_text()))
        else:
            seen.append(step.name)
        return real(gpu_suite.Step(step.name, 5, [sys.executable, "-c", "pass"]), timeout, log,
                    out)

    monkeypatch.setattr(gpu_suite, "run_step", run_then_look)
    monkeypatch.setattr(gpu_suite, "probe", lambda python: NO_PROBE)
    assert gpu_suite.main(["200", "--dry-run", "--steps", "versions", "kernels",
                           "--out-dir", str(tmp_path)]) == 0
    on_disk = seen[1]
    assert list(on_disk["steps"]) == ["versions"] and on_disk["steps"]["versions"]["ok"]
    assert not on_disk["complete"]
    assert json.loads((tmp_path / "gpu_suite.json").read_text())["complete"]


def test_the_suites_probe_finds_the_project_in_a_bare_copy(tmp_path):
    """The default run's stand-in for the rehearsal below (``slow``): the files git tracks (and
    the untracked ones it does not ignore) copied to a folder with the in-place tpo_fast._C,
    nothing of the project installed (as benchmarks/gpu_suite.sh leaves it), then the suite's probe
    under ``python -S`` (no site: the editable install's finder is not loaded) with only the copy
    and the bare site-packages on PYTHONPATH: tpo_fast, tpo_fast.kernels and tpo_fast._C import
    from the copy. Not covered here: the kit's wheels and the steps' dry forms (the rehearsal,
    ``make test-all``)."""
    import sysconfig

    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    clone = tmp_path / "clone"
    for name in filter(None, (f.decode() for f in files)):
        if (ROOT / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            (clone / name).write_bytes((ROOT / name).read_bytes())
    # the extension this clone's install built in place (pybind11 is a build-time requirement
    # only, not in the venv: the build itself is the install's and gpu_suite.sh's)
    (built,) = (ROOT / "tpo_fast").glob("_C.*")
    (clone / "tpo_fast" / built.name).write_bytes(built.read_bytes())
    bare = tmp_path / "python3"  # this venv's python without site (the probe runs it too)
    bare.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    bare.chmod(0o755)
    code = "import json; from benchmarks import gpu_suite; " \
           f"print(json.dumps(gpu_suite.probe({str(bare)!r})))"
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(clone), sysconfig.get_paths()["purelib"]])}
    proc = subprocess.run([bare, "-c", code], cwd=clone, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    imports = json.loads(proc.stdout.strip().splitlines()[-1])["imports"]
    assert imports["tpo_fast"] == str(clone / "tpo_fast" / "__init__.py"), imports
    assert imports["tpo_fast.kernels"] == str(clone / "kernels" / "__init__.py"), imports
    assert Path(imports["tpo_fast._C"]).parent == clone / "tpo_fast", imports


KIT = Path(os.environ.get("GPU_KIT", ROOT.parent / "shared" / "gpu"))
REHEARSAL_BUDGET_S = 600  # a ceiling: a quiet CI machine takes far less


@pytest.mark.slow  # the bare-copy probe above is the default run's check of the imports
@pytest.mark.skipif(not (KIT / "make-carry").is_file(),
                    reason=f"no GPU kit at {KIT} (../shared/gpu beside the clone, or $GPU_KIT)")
def test_rehearsal_of_the_machines_call(tmp_path):
    """The lent machine's call, rehearsed by benchmarks/rehearse_gpu_suite.sh (CI's variant:
    this venv's Python and versions, only the packages the image has): a fresh clone with
    nothing of the project installed, the kit's wheels installed by the kit's own script, then
    `bash benchmarks/gpu_suite.sh BUDGET --dry-run` in a bare environment; every step runs in
    its dry form, tpo_fast.kernels and tpo_fast._C import from the clone."""
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "rehearse_gpu_suite.sh"),
                           "--from-venv", sys.prefix, "--budget", str(REHEARSAL_BUDGET_S),
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=REHEARSAL_BUDGET_S + 600, env=dict(os.environ, GPU_KIT=str(KIT)))
    assert (tmp_path / "gpu_suite.json").is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "gpu_suite.json").read_text())
    failed = {k: v.get("output_tail", v.get("skipped")) for k, v in summary["steps"].items()
              if not v.get("ok")}
    assert proc.returncode == 0 and not failed, failed
    assert summary["dry_run"] and summary["complete"] and summary["environment"]["commit"]
    assert list(summary["steps"]) == [s.name for s in gpu_suite.steps(tmp_path, True, "x")]
    for step in summary["steps"].values():
        if "result_file" in step:
            assert step["result_written"], step["command"]
            json.loads((tmp_path / step["result_file"]).read_text())
    assert "passed" not in summary["steps"]["gpu_tests"]["output_tail"]  # collected, not run
    # one header a step (the steps' own output may hold "=====", e.g. pytest's section lines)
    headers = re.findall(r"^===== (\S+) \(cap ", (tmp_path / "gpu_suite.log").read_text(),
                         flags=re.M)
    assert headers == list(summary["steps"])
    assert summary["wall_s"] < REHEARSAL_BUDGET_S
    # the project from the clone, nothing of it installed; the kit's wheels in use
    imports = summary["imports"]
    clone = Path(imports["tpo_fast"]).parents[1]
    assert clone != ROOT and (clone / ".whl").is_dir(), imports
    assert imports["tpo_fast.kernels"] == str(clone / "kernels" / "__init__.py"), imports
    assert Path(imports["tpo_fast._C"]).parent == clone / "tpo_fast", imports
    versions = summary["environment"]["versions"]
    assert "tpo-fast" not in versions and versions["deepspeed"] == "0.19.8", versions
    assert summary["steps"]["kernel_tests"]["command"].split().count("-n") == 1  # xdist there


def test_a_failing_variant_is_recorded_and_the_others_kept(monkeypatch):
    """packed_forward with a backend that raises (as varlen_attn(enable_gqa=...) would on torch
    2.11): its exception is the variant's entry, the other variants are measured, and the
    result so far is reported after every variant."""
    from benchmarks import packed_forward
    from tpo_fast.attention import backends

    def broken(*args, **kwargs):
        raise TypeError("varlen_attn() got an unexpected keyword argument 'enable_gqa'")

    for module in (packed_forward, backends):
        monkeypatch.setattr(module, "available_backends", lambda device: ["sdpa", "flex"])
    monkeypatch.setattr(backends, "_compiled_flex", lambda: broken)
    reports = []
    result = packed_forward.run(64, 8, packed_forward.TINY, "cpu", torch.float32, reps=1,
                                report=reports.append)
    assert result["results"]["packed[flex]"]["error"].startswith("TypeError: varlen_attn()")
    for name in ("unpacked_full_logits", "unpacked_response_head", "packed[sdpa]"):
        assert result["results"][name]["fwd_bwd"]["median_s"] > 0, name
    assert [len(r["results"]) for r in reports] == [1, 2, 3, 4]
    assert not any(r["complete"] for r in reports) and result["complete"]
