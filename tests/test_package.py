"""Package-level behaviour: light import, the extension fallback, the CLI, the benchmark."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)


def test_import_is_light():
    out = run_python(
        "import sys, tpo_fast\n"
        "heavy = ('torch', 'deepspeed', 'transformers', 'nvidia', 'triton', 'av')\n"
        "print([m for m in sys.modules if m.split('.')[0] in heavy])\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_kernels_package_imports_as_tpo_fast_kernels():
    out = run_python("import tpo_fast.kernels as k; print(k.__name__, k.__file__)")
    assert out.returncode == 0, out.stderr
    name, path = out.stdout.split()
    assert name == "tpo_fast.kernels" and Path(path).parent.name == "kernels"


def test_missing_extension_falls_back_with_one_warning():
    out = run_python(
        "import sys, warnings\n"
        "sys.modules['tpo_fast._C'] = None  # as if the extension were not built\n"
        "from tpo_fast.packing import build_indices, native_available, plan_bins\n"
        "from tpo_fast.packing import naive\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    plan = plan_bins([5, 6, 7], [1, 1, 1], [1, 1, 1], 100, 2)\n"
        "    plan_bins([5, 6, 7], [1, 1, 1], [1, 1, 1], 100, 2)\n"
        "    build_indices([5], [1], [1])\n"
        "print(native_available(), len(caught), plan.num_bins)\n"
        "print(caught[0].message)\n"
        "try:\n"
        "    plan_bins([5], [1], [1], 100, backend='native')\n"
        "except ImportError as e:\n"
        "    print('ImportError:', e)\n"
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "False 1 2"
    assert "tpo_fast._C is not built; packing uses the numpy oracle" in lines[1]
    assert lines[2].startswith("ImportError: tpo_fast._C is not built")


def tpo_fast_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tpo_fast", *args], capture_output=True,
                          text=True, cwd=ROOT)


def test_cli_plan_writes_summary(tmp_path):
    out = tpo_fast_cli("plan", "--pairs", "300", "--world-size", "4", "--json",
                       str(tmp_path / "s.json"))
    assert out.returncode == 0, out.stderr
    assert "planned 300 of 300 pairs" in out.stdout
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["backend"] == "native" and summary["world_size"] == 4
    assert summary["steps"] * 4 == summary["bins"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--pairs", "3", "--world-size", "8"], "every rank needs at least one pair"),
        (["--token-budget", "1000"], "exceeds token_budget 1000"),
        (["--world-size", "0"], "world_size must be >= 1"),
    ],
)
def test_cli_bad_input_is_one_clear_line(args, message):
    out = tpo_fast_cli("plan", *args)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


def test_cli_drop_overlong_reports_the_skips():
    out = tpo_fast_cli("plan", "--pairs", "200", "--token-budget", "20000", "--drop-overlong")
    assert out.returncode == 0, out.stderr
    dropped = int(out.stdout.split("dropped ")[1].split(",")[0])
    assert 0 < dropped < 200


def test_packing_benchmark_smoke(tmp_path):
    out = subprocess.run([sys.executable, "-m", "benchmarks.packing", "--smoke", "--out",
                          str(tmp_path / "b.json")], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["plans_identical"] is True
    assert set(result["targets"]) == {"speedup", "fill", "imbalance"}
    env = result["environment"]
    assert env["device"] and env["versions"]["numpy"] and "benchmarks.packing" in env["command"]
