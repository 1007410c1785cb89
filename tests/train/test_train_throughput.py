"""benchmarks/train_throughput.py: the smoke run writes the result the committed CPU file has
(speed-up, every arm, the ablation, the equal-loss check), the check catches an arm whose loss
differs, the FLOP count orders the arms as their work does, and the scaled vocabulary gives
the LM head Qwen2-7B's share of the parameters."""

import json

import pytest
import torch

from benchmarks import train_throughput as tt


def test_smoke_run_writes_every_arm_and_the_equal_loss_check(tmp_path):
    out = tmp_path / "tt.json"
    assert tt.main(["--smoke", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "train_throughput"
    assert result["environment"]["commit"] and result["environment"]["device"]
    assert result["equal_loss_passed"] is True
    (run,) = result["runs"]
    assert set(run["arms"]) == set(tt.ARMS)
    assert result["speedup"] == pytest.approx(
        run["arms"]["fast"]["pairs_per_s"] / run["arms"]["standard"]["pairs_per_s"])
    ablation = result["ablation"][str(run["frames"])]
    assert {e["saving_turned_off"] for e in ablation.values()} == set(tt.SAVING.values())
    losses = run["equal_loss"]["losses"]
    assert max(losses.values()) - min(losses.values()) <= 1e-4 * abs(losses["standard"])
    for arm, entry in run["arms"].items():
        assert entry["step_s"]["median"] > 0 and entry["pairs_per_s"] > 0, arm
        assert entry["peak_extra_memory_bytes"] is not None, arm
        assert entry["flops_per_step"]["total"] > 0 and 0 < entry["mfu"], arm
    assert run["reference_pass_s"]["median"] > 0
    assert run["arms"]["fast"]["reference_pass_s_added"] == run["reference_pass_s"]["median"]
    assert run["arms"]["standard"]["reference_pass_s_added"] == 0
    assert result["load"]["before"]["loadavg_1m"] >= 0
    # the FLOP bound beside the measured speed-up, from the benchmark's own formula
    bench = tt.Bench(tt.SHAPES["smoke"], run["frames"], "cpu", torch.float32)
    bound = (tt.flop_count(bench, "standard")["total"] / tt.flop_count(bench, "fast")["total"])
    assert run["flop_bound_speedup"] == pytest.approx(bound) and bound > 1
    assert result["flop_bound_speedup"] == run["flop_bound_speedup"]
    assert run["speedup_over_flop_bound"] == pytest.approx(run["speedup"] / bound)
    assert result["complete"] and result["mix"] is None


def test_the_realistic_mix_and_the_json_after_every_shape(tmp_path, monkeypatch):
    """--mix: pairs of different video and response lengths (chosen and rejected apart), both
    ratios written; the JSON is on disk after the first shape already."""
    out = tmp_path / "tt.json"
    written = []
    real = tt.write_result

    def write(name, payload, path):
        written.append(json.loads(json.dumps(payload, default=str)))
        return real(name, payload, path)

    monkeypatch.setattr(tt, "write_result", write)
    assert tt.main(["--smoke", "--mix", "--arms", "standard", "fast", "--out", str(out)]) == 0
    assert [w["complete"] for w in written] == [False, True]
    assert [r["frames"] for r in written[0]["runs"]] == [2]
    result = json.loads(out.read_text())
    mix = result["runs"][-1]
    assert mix["frames"] == "mix" and result["mix"]["speedup"] == mix["speedup"]
    lengths = mix["lengths"]
    assert lengths == result["mix"]["pairs"]
    expected = tt.mix_lengths(tt.MIXES["smoke"])
    assert [(x["frames"], x["chosen"], x["rejected"]) for x in lengths] == expected
    assert len({x["frames"] for x in lengths}) > 1
    assert any(x["chosen"] != x["rejected"] for x in lengths)
    assert mix["flop_bound_speedup"] > 1 and mix["speedup_over_flop_bound"] > 0
    assert mix["equal_loss"]["passed"]
    lo, hi = tt.MIXES["cpu"]["response_tokens"]
    assert (lo, hi) == (20, 500)


def test_an_arm_that_raises_is_recorded_and_the_rest_measured(monkeypatch):
    def broken(self):
        raise TypeError("varlen_attn() got an unexpected keyword argument 'enable_gqa'")

    monkeypatch.setattr(tt.Bench, "step_no_packing", broken)
    run = tt.run_shape(tt.SHAPES["smoke"], 2, "cpu", torch.float32, reps=1,
                       arms=("standard", "fast", "no_packing"))
    assert run["arms"]["no_packing"]["error"].startswith("TypeError: varlen_attn()")
    assert run["speedup"] > 0 and run["arms"]["fast"]["pairs_per_s"] > 0


def test_equal_loss_check_fails_for_a_different_loss(monkeypatch):
    """An arm whose loss is off by 1e-3 (relative) fails the check (rtol 1e-4)."""
    honest = tt.Bench.step_no_packing
    monkeypatch.setattr(tt.Bench, "step_no_packing", lambda self: honest(self) * (1 + 1e-3))
    run = tt.run_shape(tt.SHAPES["smoke"], 2, "cpu", torch.float32, reps=1,
                       arms=("standard", "fast", "no_packing"))
    check = run["equal_loss"]
    assert not check["passed"]
    assert check["relative_difference"]["no_packing"] == pytest.approx(1e-3, rel=1e-2)
    assert check["relative_difference"]["fast"] <= 1e-4


def test_flop_count_orders_the_arms():
    bench = tt.Bench(tt.SHAPES["smoke"], 2, "cpu", torch.float32)
    flops = {arm: tt.flop_count(bench, arm)["total"] for arm in tt.ARMS}
    for arm in ("standard", "no_prefix_sharing", "no_vision_once", "no_fused_head"):
        assert flops[arm] > flops["fast"], arm
    assert flops["no_packing"] == flops["fast"]  # same work, more micro-steps
    # a live reference does every step what the one-time pass does once per pair
    assert flops["no_precomputed_reference"] == flops["fast"]
    live = tt.flop_count(bench, "no_precomputed_reference")["by_part"]
    assert "reference" in live and "reference_pass" not in live
    fast = tt.flop_count(bench, "fast")["by_part"]
    P, C, R = (len(bench.pairs[0][k]) for k in ("prompt", "chosen", "rejected"))
    # the rejected segment attends the prompt's keys: R·P + R(R+1)/2 pairs, not (P+R)(P+R+1)/2
    one = (P + C) * (P + C + 1) // 2 + R * P + R * (R + 1) // 2
    t = bench.config.text_config
    assert fast["policy"]["attention"] >= 3 * 4 * t.hidden_size * t.num_hidden_layers * one


def test_scaled_vocab_gives_qwen2_7b_head_share():
    text = dict(tt.SHAPES["cpu"]["text"])
    V = tt.scaled_vocab(text)
    head = V * text["hidden_size"]
    layers = text["num_hidden_layers"] * tt.linear_params(text)
    assert head / (layers + 2 * head) == pytest.approx(tt.qwen2_7b_head_fraction(), rel=1e-2)
    assert 0.06 < tt.qwen2_7b_head_fraction() < 0.08


def test_an_arm_out_of_memory_is_recorded_and_the_rest_measured(monkeypatch):
    def oom(self):
        raise torch.OutOfMemoryError("full logits")

    monkeypatch.setattr(tt.Bench, "step_standard", oom)
    run = tt.run_shape(tt.SHAPES["smoke"], 2, "cpu", torch.float32, reps=1,
                       arms=("standard", "fast", "no_packing"))
    assert "out of memory" in run["arms"]["standard"]["error"]
    assert run["speedup"] is None
    assert run["arms"]["no_packing"]["pairs_per_s"] > 0
    assert run["equal_loss"]["passed"]  # fast and no_packing agree
