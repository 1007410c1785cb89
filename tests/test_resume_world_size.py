"""Resume on another cluster shape, and a killed rank (2 gloo processes on the CPU).

What "equal" means when the data-parallel size changes the micro-batches:

* **pairs** — within an epoch every pair is trained exactly once: the steps before the resume are
  the old shape's plan, the rest of the epoch is the new shape's plan of the pairs not yet
  trained (``data_order.jsonl`` lists each step's pairs);
* **losses** — model, optimizer moments, step count and LR schedule carry over exactly (through
  DeepSpeed's universal checkpoint under ZeRO-3), so a step that holds the same pairs as in the
  uninterrupted run has its loss (1e-5; only the reduction order differs). With one optimizer
  step per epoch (global batch = every pair) every step holds the same pairs on any shape, so
  the whole resumed run equals the uninterrupted one; mid-epoch, the re-planned rest of the
  epoch holds the pairs the old run's next step held when they fit one step.

The ZeRO-3 runs load the tiny LLaVA-OneVision from a folder, as test_real_paths.py does.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_real_paths import QUIET, TINY, _env, _free_port, tpo_fast

from tpo_fast.config import load_config
from tpo_fast.synthetic.pairs import make_pairs
from tpo_fast.models.tiny_folders import save_tiny_model
from tpo_fast.train.metrics import read_metrics
from tpo_fast.train.position import (DataPosition, PlanKey, PositionError, carry, epoch_steps,
                                     pairs_of_steps, plan_for, state_fields)

# one optimizer step per epoch: every step holds all 48 pairs, whatever the shape
WHOLE = ["optim.global_batch_size=48", "optim.epochs=4"]
# two steps per epoch (>= 24 pairs, then the rest): a resume after step 1 is mid-epoch
HALF = ["optim.global_batch_size=24", "optim.epochs=1"]
COMMON = ["model.tiny=null", "optim.lr=5e-3", "optim.warmup_ratio=0", "data.token_budget=400",
          "loss.reference=none", "deepspeed.zero_stage=3", "run.save_every=1",
          "run.keep_checkpoints=10"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("reshape")
    model = save_tiny_model("llava_onevision", root / "model", hidden=64)
    pairs = make_pairs(root / "pairs", n_pairs=48, n_videos=8, seed=0)
    return model, pairs


def args(setup, out, *extra):
    model, pairs = setup
    return ["train", TINY, f"model.path={model}", f"data.train={pairs}", f"run.output_dir={out}",
            *QUIET, *COMMON, *extra]


def order(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "data_order.jsonl").read_text().splitlines()]


def assert_equal_steps(a, b, tol=1e-5):
    assert [r["step"] for r in a] == [r["step"] for r in b] and a
    for x, y in zip(a, b):
        assert x["pairs"] == y["pairs"], (x, y)
        assert abs(x["loss"] - y["loss"]) <= tol * max(1.0, abs(y["loss"])), (x, y)


@pytest.fixture(scope="module")
def uninterrupted(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("u") / "run"
    tpo_fast(args(setup, out, *WHOLE), nproc=2)
    return out


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of the torchrun worker with RANK=rank (a child of the launcher)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher and f"RANK={rank}".encode() in env:
            return int(proc.name)
    return None


@pytest.mark.multiprocess_cpu
def test_sigkill_of_rank_1_ends_the_job_and_the_rerun_equals(setup, uninterrupted, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={_free_port()}", "-m", "tpo_fast",
           *map(str, args(setup, out, *WHOLE))]
    log = tmp_path / "killed.log"
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 600
        target = out / "checkpoints" / "step-000001"
        while not target.is_dir() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = _rank_pid(proc.pid, 1)
        assert pid is not None and proc.poll() is None, "the run ended before it was killed"
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        proc.wait(timeout=120)
        took = time.monotonic() - killed_at
    text = log.read_text()
    assert took < 60, f"the job took {took:.0f} s to end after rank 1 died"
    assert proc.returncode != 0
    assert "rank: 1" in text and "-9" in text, text[-3000:]  # torchrun names the dead rank
    assert len(read_metrics(out / "metrics.jsonl")) < 4

    rerun = tpo_fast(args(setup, out, *WHOLE), nproc=2)  # the same command
    assert "resumed from" in rerun.stderr
    assert_equal_steps(read_metrics(out / "metrics.jsonl"),
                       read_metrics(uninterrupted / "metrics.jsonl"))


@pytest.mark.multiprocess_cpu
def test_a_stopped_peer_ends_the_job_after_the_collective_timeout(setup, tmp_path):
    """Rank 1 stops answering (SIGSTOP) without closing its sockets: rank 0's next collective
    gives up after deepspeed.timeout_minutes and the job ends, naming rank 0 and the step."""
    out = tmp_path / "stopped"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={_free_port()}", "-m", "tpo_fast",
           *map(str, args(setup, out, *WHOLE, "deepspeed.timeout_minutes=0.25"))]
    log = tmp_path / "stopped.log"
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 600
            target = out / "checkpoints" / "step-000001"
            while not target.is_dir() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            pid = _rank_pid(proc.pid, 1)
            assert pid is not None and proc.poll() is None, "the run ended before rank 1 stopped"
            os.kill(pid, signal.SIGSTOP)
            stopped_at = time.monotonic()
            proc.wait(timeout=180)
            took = time.monotonic() - stopped_at
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    assert proc.returncode != 0
    assert took < 15 + 60, f"the job took {took:.0f} s to end after rank 1 stopped"
    assert "rank 0: a collective failed at optimizer step" in text, text[-3000:]
    assert "deepspeed.timeout_minutes=0.25" in text


@pytest.mark.multiprocess_cpu
def test_two_processes_resume_on_one_and_equal_the_uninterrupted_run(setup, uninterrupted,
                                                                      tmp_path):
    """2 → 1 under ZeRO-3 (the size mismatch in load_module_state_dict before): the universal
    checkpoint is made beside the 2-process one, and steps 2-4 equal the 2-process run's; then
    1 → DP 1 x SP 2, and steps 3-4 equal it too."""
    step1 = uninterrupted / "checkpoints" / "step-000001"
    out = tmp_path / "one"
    proc = tpo_fast(args(setup, out, *WHOLE, f"run.resume={step1}"), nproc=1)
    assert "universal" in proc.stderr and (step1 / "universal" / "zero").is_dir()
    straight = read_metrics(uninterrupted / "metrics.jsonl")
    assert len(straight) == 4 and all(r["pairs"] == 48 for r in straight)
    resumed = read_metrics(out / "metrics.jsonl")
    assert_equal_steps(resumed, straight[1:])
    assert straight[-1]["loss"] < straight[0]["loss"]
    assert json.loads((out / "summary.json").read_text())["world_size"] == 1

    # ... and the 1-process checkpoint of step 2 on 2 processes as one SP group (DP 1 x SP 2)
    sp = tmp_path / "sp2"
    step2 = out / "checkpoints" / "step-000002"
    tpo_fast(args(setup, sp, *WHOLE, f"run.resume={step2}", "deepspeed.sequence_parallel_size=2"),
             nproc=2)
    assert_equal_steps(read_metrics(sp / "metrics.jsonl"), straight[2:])


@pytest.mark.multiprocess_cpu
def test_one_process_resumes_mid_epoch_on_two(setup, tmp_path):
    """1 → 2 after the first of two steps of the epoch: the rest is planned for 2 ranks, holds
    exactly the pairs not yet trained (here: the pairs of the 1-process run's step 2), and
    its loss equals that step's."""
    one = tmp_path / "one"
    tpo_fast(args(setup, one, *HALF), nproc=1)
    straight = read_metrics(one / "metrics.jsonl")
    assert len(straight) == 2
    two = tmp_path / "two"
    step1 = one / "checkpoints" / "step-000001"
    proc = tpo_fast(args(setup, two, *HALF, f"run.resume={step1}"), nproc=2)
    assert "re-planned" in proc.stderr
    first, rest = order(one), order(two)
    assert [r["step"] for r in rest] == [2]
    trained = first[0]["pairs"] + rest[0]["pairs"]
    assert sorted(trained) == list(range(48))  # every pair of the epoch once
    assert rest[0]["pairs"] == first[1]["pairs"]
    assert_equal_steps(read_metrics(two / "metrics.jsonl"), straight[1:])


# ---- the data position, without processes ------------------------------------------------------
def _lengths(n, seed):
    rng = np.random.default_rng(seed)
    return (rng.integers(20, 300, n), rng.integers(1, 40, n), rng.integers(1, 40, n))


def _key(dp, sp=1, budget=512, gbs=16, seed=0):
    return PlanKey(dp, sp, budget, gbs, seed, True)


@pytest.mark.parametrize("old, new", [((2, 1), (1, 1)), ((1, 1), (2, 1)), ((4, 1), (3, 1)),
                                      ((2, 2), (3, 1)), ((1, 1), (2, 2))])
def test_a_reshaped_epoch_trains_every_pair_once(old, new):
    lengths = _lengths(203, seed=sum(old) * 7 + sum(new))
    then = _key(*old)
    steps = epoch_steps(then, plan_for(then, lengths, 0), lengths)
    for index in range(len(steps) + 1):
        state = {**state_fields(then, DataPosition(step=3 + index, epoch=0, index=index),
                                lengths), "world_size": old[0] * old[1]}
        position, replanned = carry(_key(*new), lengths, state, "ckpt")
        assert replanned
        if index == len(steps):
            assert (position.epoch, position.index, position.excluded) == (1, 0, ())
            continue
        before = pairs_of_steps(plan_for(then, lengths, 0), steps[:index])
        rest_plan = plan_for(_key(*new), lengths, 0, position.excluded)
        rest = pairs_of_steps(rest_plan, epoch_steps(_key(*new), rest_plan, lengths))
        kept = plan_for(then, lengths, 0)
        expected = sorted(set(range(203)) - set(kept.dropped.tolist()))
        assert sorted(np.concatenate([before, rest]).tolist()) == expected
        assert sorted(position.excluded) == sorted(before.tolist())


def test_the_same_shape_replays_and_what_cannot_be_carried_is_refused():
    lengths = _lengths(40, seed=1)
    key = _key(2)
    state = {**state_fields(key, DataPosition(step=2, epoch=0, index=2), lengths),
             "world_size": 2}
    assert carry(key, lengths, state, "ckpt") == (DataPosition(2, 0, 2, ()), False)
    changed = (lengths[0] + 1, lengths[1], lengths[2])
    with pytest.raises(PositionError, match="differ from those the checkpoint.*new run"):
        carry(key, changed, state, "ckpt")
    # fewer pairs left in the epoch than data-parallel ranks: 5 pairs, one a step, 3 done
    few = (np.full(5, 300), np.full(5, 10), np.full(5, 10))
    state = {**state_fields(_key(1, gbs=1), DataPosition(step=3, epoch=0, index=3), few),
             "world_size": 1}
    with pytest.raises(PositionError, match="resume on at most 2 data-parallel"):
        carry(_key(4, gbs=1), few, state, "ckpt")


def test_a_zero_stage_change_on_another_shape_is_refused(tmp_path):
    from tpo_fast.config import ConfigError
    from tpo_fast.train.build import _check_reshape

    cfg = load_config(TINY, ["deepspeed.zero_stage=3"])
    with pytest.raises(ConfigError, match="resume with deepspeed.zero_stage=2"):
        _check_reshape(cfg, {"world_size": 2, "zero_stage": 2}, tmp_path)
    bf16 = load_config(TINY, ["deepspeed.zero_stage=0", "model.dtype=bfloat16"])
    with pytest.raises(ConfigError, match="resume on the same cluster shape"):
        _check_reshape(bf16, {"world_size": 2, "zero_stage": 0}, tmp_path)
