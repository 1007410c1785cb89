"""Sequence parallelism (DeepSpeed Ulysses around the prefix-shared attention) equals one rank.

* the shard layout on the host: token shards, padding, the video-feature rows of each shard,
  which rank scores which token (the rejected response's first token is predicted by the
  prompt's last token, which may lie on another shard);
* 2 gloo processes, SP = 2 vs SP = 1 on the same packed batch (tiny qwen2_vl, M-RoPE, and
  tiny llava_onevision; several pairs of different lengths, a prompt straddling the shard
  boundary, even and odd token counts, a shard of prompt only): the loss, the per-response
  log-probs and every trainable gradient (summed over the group, as DeepSpeed's reduction
  does) within 1e-5, with the vision tower's frames split over the two ranks;
* the user's path: ``tpo-fast train ... deepspeed.sequence_parallel_size=2`` from a model
  folder on 2 processes under ZeRO-3 (live reference; LoRA with gradient checkpointing and the
  tiled MLP) equals the 1-process ZeRO-3 run step by step (loss, gradient norm) and in the
  exported weights; 4 processes as DP 2 x SP 2 equal it too; and ``ref-logps`` with SP = 2
  equals 1 process;
* clear errors where Ulysses cannot split.
"""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import (
    QUIET,
    TINY,
    assert_losses_equal,
    free_port,
    subprocess_env,
    tpo_fast,
)

from tpo_fast.config import ConfigError, load_config
from tpo_fast.packing import pack_pairs
from tpo_fast.sequence_parallel import check_heads, shard_features, shard_plan

VIDEO = 7  # the video token id of the hand-made batch


def _batch():
    # pair 0: 6-token prompt with 3 video tokens, pair 1: 9-token prompt with 4 video tokens
    prompts = [[1, VIDEO, VIDEO, VIDEO, 2, 3], [4, 5, VIDEO, VIDEO, VIDEO, VIDEO, 6, 8, 9]]
    return pack_pairs(prompts, [[10, 11], [12]], [[13], [14, 15, 16]])


def test_shard_plan_covers_every_token_once():
    batch = _batch()  # T = 6 + 2 + 1 + 9 + 1 + 3 = 22 tokens, N = 7 scored
    assert batch.num_tokens == 22
    for size in (2, 3, 4):
        plans = [shard_plan(batch, size, r, VIDEO) for r in range(size)]
        length = plans[0].length
        assert length == -(-22 // size) and all(p.length == length for p in plans)
        ids = torch.cat([p.input_ids for p in plans])
        assert torch.equal(ids[:22], batch.input_ids) and len(ids) == size * length
        assert not (ids[22:] == VIDEO).any()  # padding is never a video token
        # video rows: consecutive, all 7 video tokens, each shard's rows = its video tokens
        rows = [p.video_rows for p in plans]
        assert rows[0][0] == 0 and rows[-1][1] == 7
        assert all(a[1] == b[0] for a, b in zip(rows, rows[1:]))
        for p in plans:
            assert p.video_rows[1] - p.video_rows[0] == int((p.input_ids == VIDEO).sum())
        # every scored token on exactly one rank: the one holding its predicting hidden state
        order = plans[0].order
        assert sorted(order.tolist()) == list(range(7))
        for r, p in enumerate(plans):
            assert p.counts == tuple(len(q.scored) for q in plans)
            positions = batch.logit_index[p.scored]
            assert ((positions >= r * length) & (positions < (r + 1) * length)).all()
            assert torch.equal(p.local_rows, positions - r * length)
    # the positions of the padding are 0; of real tokens, the packer's
    plan = shard_plan(batch, 4, 3, VIDEO)
    assert plan.length == 6 and plan.start == 18
    assert plan.position_ids[4:].tolist() == [0, 0]
    assert torch.equal(plan.position_ids[:4], batch.position_ids[18:])


def test_a_rejected_first_token_can_be_scored_on_the_prompt_s_shard():
    batch = _batch()
    # pair 1's prompt ends at packed token 17 (9 + 18 - 1 = 17): its last hidden state predicts
    # the first chosen and the first rejected token, though the rejected tokens lie past 19
    plans = [shard_plan(batch, 2, r, VIDEO) for r in range(2)]
    first_rejected = (batch.seq_id == 3).nonzero()[0, 0]
    assert int(batch.logit_index[first_rejected]) == 17
    assert int(batch.target_index[first_rejected]) == 19
    owner = next(r for r, p in enumerate(plans) if first_rejected in p.scored.tolist())
    assert owner == 1 and plans[1].start == 11


def test_shard_features_keeps_each_structure():
    total, hidden = 7, 3
    rows = torch.arange(total * hidden, dtype=torch.float32).view(total, hidden)
    cases = {
        "batched": SimpleNamespace(pooler_output=rows[None]),  # [1, tokens, H]
        "per video": SimpleNamespace(pooler_output=(rows[:3], rows[3:])),  # Qwen-VL tuple
        "deepstack": SimpleNamespace(pooler_output=(rows,), deepstack_features=[rows, 2 * rows]),
        "deepstack per video": SimpleNamespace(  # Qwen3-VL: per layer, a tuple per video
            pooler_output=(rows[:3], rows[3:]),
            deepstack_features=[(rows[:3], rows[3:]), (2 * rows[:3], 2 * rows[3:])]),
    }
    for name, features in cases.items():
        cut = shard_features(features, 2, 5, total)
        flat = torch.cat(list(cut.pooler_output)) if isinstance(cut.pooler_output, tuple) \
            else cut.pooler_output[0]
        assert torch.equal(flat, rows[2:5]), name
    deep = shard_features(cases["deepstack"], 2, 5, total).deepstack_features
    assert [d.tolist() for d in deep] == [rows[2:5].tolist(), (2 * rows[2:5]).tolist()]
    deep = shard_features(cases["deepstack per video"], 2, 5, total).deepstack_features
    assert [d[0].tolist() for d in deep] == [rows[2:5].tolist(), (2 * rows[2:5]).tolist()]
    with pytest.raises(NotImplementedError, match="cannot split the video feature field"):
        shard_features(SimpleNamespace(pooler_output=rows[:5]), 0, 2, total)


def test_heads_that_ulysses_cannot_split_are_clear_errors():
    qwen2_7b = SimpleNamespace(num_attention_heads=28, num_key_value_heads=4)
    with pytest.raises(ValueError, match=r"does not divide the model's 28 attention heads.*"
                                         r"\[1, 2, 4, 7, 14, 28\]"):
        check_heads(qwen2_7b, 8)
    check_heads(qwen2_7b, 4)  # 7 query heads and 1 kv head per rank
    check_heads(SimpleNamespace(num_attention_heads=32, num_key_value_heads=4), 8)  # replicated
    with pytest.raises(ValueError, match="3 key/value heads"):
        check_heads(SimpleNamespace(num_attention_heads=6, num_key_value_heads=3), 2)


def test_config_rejects_sequence_parallel_on_the_slow_path():
    with pytest.raises(ConfigError, match="run.path=fast"):
        load_config(TINY, ["deepspeed.sequence_parallel_size=2", "run.path=slow"])
    with pytest.raises(ConfigError, match=">= 1"):
        load_config(TINY, ["deepspeed.sequence_parallel_size=0"])


def test_the_plan_budget_is_per_rank_of_a_group():
    """An SP group's micro-batch holds data.token_budget x SP tokens; the data splits over
    the data-parallel groups only."""
    from tpo_fast.train.build import plan_epoch

    rng = np.random.default_rng(0)
    lengths = tuple(rng.integers(lo, hi, 40) for lo, hi in ((150, 400), (5, 40), (5, 40)))
    one = plan_epoch(load_config(TINY, ["data.token_budget=500"]), lengths, 2, 0)
    two = plan_epoch(load_config(TINY, ["data.token_budget=250",
                                        "deepspeed.sequence_parallel_size=2"]), lengths, 2, 0)
    assert one.num_bins == two.num_bins
    assert all(np.array_equal(one.bin(b), two.bin(b)) for b in range(one.num_bins))
    totals = [int(sum(lengths[k][i] for k in range(3) for i in two.bin(b)))
              for b in range(two.num_bins)]
    assert max(totals) <= 500 < sum(int(x.sum()) for x in lengths)
    assert any(t > 250 for t in totals)  # more than one rank's budget in a micro-batch


@pytest.mark.multiprocess_cpu
def test_sp_size_must_divide_the_processes(tmp_path):
    cmd = [sys.executable, "-m", "tpo_fast", "train", str(TINY), *QUIET,
           "deepspeed.sequence_parallel_size=2", f"run.output_dir={tmp_path}",
           f"data.train={tmp_path / 'pairs.jsonl'}"]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "sequence_parallel_size=2 does not divide the 1 processes" in proc.stderr
    assert "Traceback" not in proc.stderr


# ---- 2 processes: SP = 2 equals SP = 1 ------------------------------------------------------
# qwen2_vl and llava_onevision (the acceptance's two), LongVA (its own model class) and
# Qwen3-VL (deepstack features cut per shard; its tower is not split: timestamps per patch)
SPLITS_FRAMES = {"qwen2_vl": True, "llava_onevision": True, "longva": True, "qwen3_vl": False}


# slow: LongVA's SP path is LLaVA-OneVision's (the same packed forward and frame split); its
# own model class keeps its default tests (tests/models/test_longva.py)
@pytest.mark.multiprocess_cpu
@pytest.mark.parametrize("family", [
    pytest.param(f, marks=pytest.mark.slow if f == "longva" else ())
    for f in sorted(SPLITS_FRAMES)])
def test_sp2_equals_sp1_loss_and_every_gradient(family, tmp_path):
    out = tmp_path / "result.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={free_port()}", str(Path(__file__).with_name("sp_worker.py")), family,
           str(out)]
    env = subprocess_env(tests_on_path=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = json.loads(out.read_text())
    assert len(ranks) == 2
    cases = ranks[0]
    assert any(c["straddling_prompts"] for c in cases)  # a prompt across the shard boundary
    assert any(c["tokens"] % 2 for c in cases) and any(c["tokens"] % 2 == 0 for c in cases)
    assert any(0 in c["scored_per_rank"] for c in cases)  # a shard of prompt only
    assert sum(c["pairs"] >= 3 for c in cases) >= 3  # packed batches of several pairs
    for per_rank in zip(*ranks):
        for c in per_rank:
            assert c["pairs"] >= 1
            assert abs(c["loss_two"] - c["loss_one"]) <= 1e-5 * max(1.0, abs(c["loss_one"]))
            assert c["logps_diff"] <= 1e-5 * 50  # summed log-probs of ~5-20 tokens, |x| < 50
            assert c["grad_max_diff"] <= 1e-5, c
            assert c["nonzero_grads"] == c["trainable"]  # every trainable parameter is checked
        assert per_rank[0]["loss_two"] == per_rank[1]["loss_two"]  # one loss per group
        one = per_rank[0]["tower_rows_one"]
        if SPLITS_FRAMES[family]:  # each rank encodes about half of the frames
            assert sum(c["tower_rows_two"] for c in per_rank) == one
            assert all(c["tower_rows_two"] <= -(-one // 2) + one // 5 for c in per_rank)
        else:  # every rank runs the whole tower
            assert all(c["tower_rows_two"] == one for c in per_rank)


# ---- the user's path: the CLI on 2 processes ----------------------------------------------------
EQUAL = ["model.tiny=null", "optim.global_batch_size=48", "optim.epochs=3", "optim.lr=5e-3",
         "optim.warmup_ratio=0", "data.token_budget=400", "loss.reference=model"]


@pytest.fixture(scope="module")
def sp_folders(tiny_folder, pairs):
    return {"qwen2_vl": tiny_folder("qwen2_vl", hidden=64, frame_size=32),
            "llava_onevision": tiny_folder("llava_onevision", hidden=64), "pairs": pairs}


def _train(folder, pairs, out, *extra, nproc=1):
    tpo_fast(["train", TINY, f"model.path={folder}", f"data.train={pairs}",
              f"run.output_dir={out}", *QUIET, *EQUAL, *extra], nproc=nproc)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _assert_same_weights(a: Path, b: Path, base: Path):
    """The exported weights agree to 1% of how far training moved them. Not to 1e-5: Adam
    divides each gradient element by its own running size, so an element whose gradient is
    near 0 moves by about ±lr whatever its size, and a rounding-level difference in it (a
    different reduction order over 2 ranks) is not small after the update. The gradients
    themselves are compared to 1e-5 in test_sp2_equals_sp1_loss_and_every_gradient, and a
    wrong or missing share of one rank moves the weights far more than 1%."""
    from transformers import AutoModelForImageTextToText

    one, two, start = (AutoModelForImageTextToText.from_pretrained(d).state_dict()
                       for d in (a, b, base))
    assert set(one) == set(two) and one
    moved = 0
    for name in one:
        update = float((one[name] - start[name]).abs().max())
        moved += update > 0
        diff = float((two[name] - one[name]).abs().max())
        assert diff <= 1e-2 * update + 1e-7, (name, diff, update)
    assert moved


@pytest.mark.multiprocess_cpu
@pytest.mark.parametrize("family,extra", [
    # slow: M-RoPE under SP is test_sp2_equals_sp1[qwen2_vl], a ZeRO-3 live reference from a
    # folder is tests/train/test_real_paths.py; the LLaVA-OneVision case stays default
    pytest.param("qwen2_vl", [], marks=pytest.mark.slow),  # ZeRO-3, a live reference
    ("llava_onevision", ["model.lora.r=4", "model.lora.alpha=8", "model.train_projector=false",
                         "model.gradient_checkpointing=true", "deepspeed.tiled_mlp=3"]),
])
def test_train_cli_with_sequence_parallel_equals_one_process(family, extra, sp_folders,
                                                             tmp_path):
    folder, pairs = sp_folders[family], sp_folders["pairs"]
    two = _train(folder, pairs, tmp_path / "sp2", *extra, "deepspeed.zero_stage=3",
                 "deepspeed.sequence_parallel_size=2", nproc=2)
    plain = [x for x in extra if not x.startswith("deepspeed.tiled_mlp")]
    one = _train(folder, pairs, tmp_path / "sp1", *plain, "deepspeed.zero_stage=3")
    assert len(one) == 3 and one[0]["pairs"] == 48
    assert one[0]["chosen_reward"] == two[0]["chosen_reward"] == 0.0  # reference = start
    assert_losses_equal(one, two)
    # the gradient itself (Adam's update hardly sees its scale; this caught ZeRO-3's
    # reduce-scatter averaging over the SP ranks too, a gradient of half the size)
    for a, b in zip(one, two):
        assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-5 * a["grad_norm"], (a, b)
    assert one[-1]["loss"] < one[0]["loss"]
    _assert_same_weights(tmp_path / "sp1" / "final", tmp_path / "sp2" / "final", folder)
    summary = json.loads((tmp_path / "sp2" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["reference"] == "model"


# slow: 4 processes on 2 cores; SP = 2 through the CLI (above) and data parallelism over ranks
# (test_real_paths.py, test_resume_world_size.py) stay in the default run
@pytest.mark.slow
@pytest.mark.multiprocess_cpu
def test_two_data_parallel_groups_of_two_equal_one_process(sp_folders, tmp_path):
    """4 processes = DP 2 x SP 2: the pairs split over the two groups (each step's tokens
    counted once), the gradient summed over each group and over the groups."""
    folder, pairs = sp_folders["qwen2_vl"], sp_folders["pairs"]
    four = _train(folder, pairs, tmp_path / "dp2sp2", "deepspeed.zero_stage=3",
                  "deepspeed.sequence_parallel_size=2", nproc=4)
    one = _train(folder, pairs, tmp_path / "one", "deepspeed.zero_stage=3")
    assert len(one) == 3
    assert_losses_equal(one, four)
    for a, b in zip(one, four):
        assert a["tokens"] == b["tokens"]
        assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-5 * a["grad_norm"], (a, b)


# slow: ref-logps on 2 processes (test_real_paths.py) and the SP forward through the CLI (above)
# stay in the default run
@pytest.mark.slow
@pytest.mark.multiprocess_cpu
def test_ref_logps_with_sequence_parallel_equals_one_process(sp_folders, tmp_path):
    common = ["model.tiny=null", f"model.path={sp_folders['qwen2_vl']}",
              f"data.train={sp_folders['pairs']}", *QUIET]
    tpo_fast(["ref-logps", TINY, *common, "deepspeed.sequence_parallel_size=2", "--out",
              tmp_path / "sp2.jsonl"], nproc=2)
    tpo_fast(["ref-logps", TINY, *common, "--out", tmp_path / "one.jsonl"])
    two, one = ([json.loads(line) for line in (tmp_path / f).read_text().splitlines()]
                for f in ("sp2.jsonl", "one.jsonl"))
    assert len(one) == len(two) == 48
    for a, b in zip(one, two):
        for x, y in zip(a["ref_logps"], b["ref_logps"]):
            assert abs(x - y) <= 1e-5 * max(1.0, abs(x)), (a, b)
