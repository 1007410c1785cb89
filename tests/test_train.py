"""``tpo-fast train`` end to end on the tiny model (CPU): learning, fast == slow, SIGKILL +
resume == uninterrupted, export, reference log-probs, errors. ZeRO-3 over 2 processes, LoRA and
the presets from model folders: test_real_paths.py.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tpo_fast.cli import main
from tpo_fast.config import load_config
from tpo_fast.synthetic.pairs import make_pairs
from tpo_fast.train.loop import Trainer, TrainingError
from tpo_fast.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny.yaml"
QUIET = ["run.progress=false", "run.tensorboard=false", "run.plot=false"]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return make_pairs(tmp_path_factory.mktemp("pairs"), n_pairs=48, n_videos=8, seed=0)


def overrides(pairs, out, *extra):
    return [f"data.train={pairs}", f"run.output_dir={out}", *QUIET, *extra]


def run(pairs, out, *extra):
    trainer = Trainer(load_config(TINY, overrides(pairs, out, *extra)))
    summary = trainer.run()
    return trainer, summary, read_metrics(Path(out) / "metrics.jsonl")


def losses(rows):
    return [r["loss"] for r in rows]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _env():
    env = dict(os.environ)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
                "LOCAL_WORLD_SIZE"):
        env.pop(key, None)  # set by in-process runs of this test module
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_tiny_run_learns_and_exports(pairs, tmp_path):
    out = tmp_path / "run"
    trainer, summary, rows = run(pairs, out, "optim.max_steps=30", "optim.epochs=50",
                                 "run.plot=true")
    assert summary["steps"] == 30 and len(rows) == 30
    first, last = rows[:5], rows[-5:]
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)
    assert mean(last, "loss") < mean(first, "loss") - 0.1
    assert mean(last, "reward_accuracy") > mean(first, "reward_accuracy") + 0.2
    assert mean(last, "reward_margin") > mean(first, "reward_margin")
    assert (out / "metrics.png").stat().st_size > 1000
    assert (out / "config.yaml").read_text().startswith("# ")
    assert json.loads((out / "summary.json").read_text())["steps"] == 30

    from transformers import AutoModelForImageTextToText

    loaded = AutoModelForImageTextToText.from_pretrained(out / "final")
    trained = trainer.policy.model.state_dict()
    exported = loaded.state_dict()
    assert set(exported) == set(trained)
    for name, value in trained.items():
        torch.testing.assert_close(exported[name], value, rtol=0, atol=0, msg=name)
    # the exported weights are the trained ones, not the starting ones
    start = load_config(TINY, overrides(pairs, out))
    from tpo_fast.train.setup import load_tokenizer_and_model

    _, initial, _ = load_tokenizer_and_model(start, None, role="score")
    name = "lm_head.weight"
    assert not torch.equal(initial.state_dict()[name], exported[name])


def test_fast_path_equals_slow_path(pairs, tmp_path):
    steps = ["optim.max_steps=5", "optim.epochs=10", "loss.reference=model"]
    _, _, fast = run(pairs, tmp_path / "fast", *steps, "run.path=fast")
    _, _, slow = run(pairs, tmp_path / "slow", *steps, "run.path=slow")
    assert len(fast) == len(slow) == 5
    for f, s in zip(fast, slow):
        for key in ("loss", "dpo_loss", "sft_nll", "reward_margin"):
            assert abs(f[key] - s[key]) <= 1e-4 * max(1.0, abs(s[key])), (key, f, s)
    assert fast[-1]["reward_margin"] != 0.0  # the policy moved away from the reference


def _train_cmd(config_args, nproc=1):
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            f"--master_port={_free_port()}", "-m", "tpo_fast", "train", str(TINY), *config_args]


def test_sigkill_and_resume_reproduce_the_run(pairs, tmp_path):
    common = ["optim.max_steps=14", "optim.epochs=50", "run.save_every=3",
              "loss.reference=model"]
    out = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(overrides(pairs, out, *common)), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    target = out / "checkpoints" / "step-000006"
    deadline = time.monotonic() + 300
    while not target.is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_rows = read_metrics(out / "metrics.jsonl")
    assert 6 <= len(killed_rows) < 14

    resumed = subprocess.run(_train_cmd(overrides(pairs, out, *common)), env=_env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    rows = read_metrics(out / "metrics.jsonl")

    _, _, straight = run(pairs, tmp_path / "straight", *common)
    assert [r["step"] for r in rows] == list(range(1, 15))
    for a, b in zip(rows, straight):
        assert abs(a["loss"] - b["loss"]) <= 1e-6 * max(1.0, abs(b["loss"])), (a, b)


def test_ref_logps_stored_and_used(pairs, tmp_path):
    stored = tmp_path / "with_ref.jsonl"
    cfg_args = overrides(pairs, tmp_path / "unused")
    assert main(["ref-logps", str(TINY), *cfg_args, "--out", str(stored)]) == 0
    objects = [json.loads(line) for line in stored.read_text().splitlines()]
    original = [json.loads(line) for line in Path(pairs).read_text().splitlines()]
    assert len(objects) == len(original)
    assert all(o["task"] == p["task"] and len(o["ref_logps"]) == 2
               for o, p in zip(objects, original))
    # relative video paths keep working from the new file's folder
    for obj in objects:
        obj["video"] = str(Path(pairs).parent / obj["video"])
    stored.write_text("".join(json.dumps(o) + "\n" for o in objects))

    steps = ["optim.max_steps=4", "optim.epochs=10"]
    _, _, live = run(pairs, tmp_path / "live", *steps, "loss.reference=model")
    trainer, summary, pre = run(stored, tmp_path / "pre", *steps)
    assert summary["reference"] == "precomputed" and trainer.ref_scorer is None
    for a, b in zip(live, pre):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * max(1.0, abs(a["loss"])), (a, b)


def test_nan_loss_stops_with_step_batch_and_checkpoint(pairs, tmp_path):
    out = tmp_path / "nan"
    with pytest.raises(TrainingError, match=r"non-finite loss at optimizer step \d+ .*holds: "
                                            r".*pairs.jsonl:\d+") as info:
        run(pairs, out, "optim.lr=1e30", "optim.max_steps=10", "optim.epochs=50",
            "optim.warmup_ratio=0", "optim.max_grad_norm=0")
    kept = Path(str(info.value).split("saved in ")[1].split(";")[0])
    assert (kept / "trainer_state.json").is_file()


@pytest.mark.parametrize("extra, message", [
    (["loss.bta=0.1"], "did you mean loss.beta"),
    (["data.train=/nonexistent/pairs.jsonl", "data.synthetic=false"],
     "/nonexistent/pairs.jsonl does not exist"),
    (["model.tiny=null", "model.path=/nonexistent/model"], "/nonexistent/model is not a folder"),
])
def test_cli_errors_are_clear(pairs, tmp_path, capsys, extra, message):
    rc = main(["train", str(TINY), *overrides(pairs, tmp_path / "r"), *extra])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_bad_pair_lines_and_videos_are_named(pairs, tmp_path, capsys):
    lines = Path(pairs).read_text().splitlines()
    broken = tmp_path / "broken.jsonl"
    bad_video = json.loads(lines[1]) | {"video": str(Path(pairs).parent / "missing.mp4")}
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00" * 1000)
    corrupt_video = json.loads(lines[2]) | {"video": str(corrupt)}
    good = [json.loads(line) for line in lines[3:]]
    for obj in good:
        obj["video"] = str(Path(pairs).parent / obj["video"])
    broken.write_text("\n".join([json.dumps(good[0]), "{not json", json.dumps(bad_video),
                                 json.dumps(corrupt_video)]
                                + [json.dumps(o) for o in good[1:]]) + "\n")
    rc = main(["train", str(TINY), *overrides(broken, tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"{broken}:2: not valid JSON" in err
    assert f"{broken}:3: video" in err and "missing.mp4 not found" in err

    # with skip_invalid the bad lines (and the unreadable video) are counted skips
    _, summary, rows = run(broken, tmp_path / "skip", "data.skip_invalid=true",
                           "optim.max_steps=2")
    assert summary["skipped_pairs"] == 3 and len(rows) == 2


@pytest.mark.parametrize("name", ["tiny", "llava_video_7b_tpo", "longva_7b_tpo",
                                  "qwen2_5_vl_7b_tpo", "llava_onevision_0_5b_tpo"])
def test_preset_configs_load_and_name_their_command(name):
    path = ROOT / "configs" / f"{name}.yaml"
    assert path.read_text().splitlines()[0].startswith("# tpo-fast ")
    cfg = load_config(path)
    if name == "llava_video_7b_tpo":
        assert (cfg.loss.beta, cfg.loss.sft_weight, cfg.optim.lr) == (0.2, 1.0, 3e-7)
        assert (cfg.optim.global_batch_size, cfg.data.frames, cfg.deepspeed.zero_stage) == (
            64, 32, 3)
        assert not cfg.model.train_vision_tower and cfg.model.dtype == "bfloat16"
    if name == "longva_7b_tpo":
        assert (cfg.loss.beta, cfg.loss.sft_weight, cfg.optim.lr) == (0.3, 0.5, 4e-6)
