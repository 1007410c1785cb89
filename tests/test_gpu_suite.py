"""benchmarks/gpu_suite.py: the real commands (what the lent machine runs), the budgeting, and
the CPU dry run end to end (every step in its smoke form; CI runs it so the suite cannot rot)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_suite

ROOT = Path(__file__).resolve().parents[1]


def test_real_commands(tmp_path):
    plan = {s.name: s for s in gpu_suite.steps(tmp_path, dry_run=False, python="python3")}
    assert list(plan) == ["versions", "gpu_tests", "kernel_tests", "kernels", "packed_forward",
                          "train_throughput", "long_video", "dali_tests", "video_gpu"]
    assert plan["gpu_tests"].argv[-3:] == ["-m", "gpu", "tests"]
    assert plan["kernel_tests"].env == {"TPO_FAST_TEST_DEVICE": "cuda"}
    assert set(gpu_suite.KERNEL_TESTS) <= set(plan["kernel_tests"].argv)
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
    assert sum(s.cap_s for s in plan.values()) <= 600 + 180  # one call plus the DALI call


def test_budget_caps_and_skips(tmp_path):
    assert gpu_suite.step_timeout(90, 480, 0) == 90
    assert gpu_suite.step_timeout(90, 480, 400) == 480 - 400 - gpu_suite.RESERVE_S
    # a budget too small for any step: every step is skipped and the JSON still written
    assert gpu_suite.main(["19", "--dry-run", "--out-dir", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert all("budget" in r["skipped"] for r in summary["steps"].values())
    with pytest.raises(SystemExit, match="unknown steps"):
        gpu_suite.main(["10", "--steps", "nope", "--out-dir", str(tmp_path)])


def test_dry_run_runs_every_step(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_suite", "400", "--dry-run",
                           "--out-dir", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    summary = json.loads((tmp_path / "gpu_suite.json").read_text())
    failed = {k: v.get("output_tail", v.get("skipped")) for k, v in summary["steps"].items()
              if not v.get("ok")}
    assert proc.returncode == 0 and not failed, failed
    assert summary["dry_run"] and summary["environment"]["commit"]
    assert list(summary["steps"]) == [s.name for s in gpu_suite.steps(tmp_path, True, "x")]
    for step in summary["steps"].values():
        if "result_file" in step:
            assert step["result_written"], step["command"]
            json.loads((tmp_path / step["result_file"]).read_text())
    assert "passed" not in summary["steps"]["gpu_tests"]["output_tail"]  # collected, not run
    assert (tmp_path / "gpu_suite.log").read_text().count("=====") == len(summary["steps"])
    assert summary["wall_s"] < 400
