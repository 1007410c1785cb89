"""examples/hf_trainer_dpo.py: PreferenceModel + preference_loss inside a Hugging Face Trainer
subclass, on a tiny random Qwen2-VL (CPU).

* The collator's packed batch and the trainer's ``compute_loss`` give the loss of the direct
  ``preference_loss`` call, and the same per-response log-probs, loss and precomputed
  reference as the obvious slow path: two unpacked rows per pair through the stock forward.
* A few Trainer steps lower the DPO loss of the training pairs (a TRL-style weighted mix of
  loss types), and the Trainer logs the pair metrics.
"""

import importlib.util
from pathlib import Path

import pytest
import torch
from tpo_fast.kernels import LossSpec, dpo_sft_loss, preference_loss

from tpo_fast.data import PairPacker

ROOT = Path(__file__).resolve().parents[1]
FAMILY = "qwen2_vl"
OPTIONS = LossSpec(beta=0.5, sft_weight=0.3)


def load_example():
    spec = importlib.util.spec_from_file_location("hf_trainer_dpo",
                                                  ROOT / "examples" / "hf_trainer_dpo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ex = load_example()


def setup(n_pairs=8, seed=0):
    policy, tokenizer = ex.build_tiny(FAMILY, seed=seed)
    collator = ex.PackedPairCollator(PairPacker(policy.adapter, tokenizer))
    examples = ex.tiny_examples(FAMILY, policy.model.config, n_pairs, seed=seed)
    return policy, tokenizer, collator, examples


def stock_token_logps(policy, tokenizer, examples):
    """The slow path: each pair as two rows (prompt + chosen, prompt + rejected) through the
    stock HF forward and log_softmax; token log-probs and their seq ids (2i, 2i + 1)."""
    adapter, model = policy.adapter, policy.model
    out, seq = [], []
    for i, e in enumerate(examples):
        prompt = adapter.prompt_ids(tokenizer, e["question"], e["video"])
        for k, text in enumerate((e["chosen"], e["rejected"])):
            response = adapter.response_ids(tokenizer, text)
            ids = torch.tensor([prompt + response])
            inputs = dict(e["video"], mm_token_type_ids=(ids == adapter.video_token_id).long() * 2)
            logps = model(input_ids=ids, **inputs).logits[0].float().log_softmax(-1)
            out.append(logps[len(prompt) - 1:-1].gather(1, torch.tensor(response)[:, None])[:, 0])
            seq.append(torch.full((len(response),), 2 * i + k))
    return torch.cat(out), torch.cat(seq)


def test_compute_loss_equals_the_direct_call_and_the_stock_rows(tmp_path):
    policy, tokenizer, collator, examples = setup(n_pairs=3)
    with torch.no_grad():
        stock, seq_id = stock_token_logps(policy, tokenizer, examples)
    stock_seq = torch.zeros(6).index_add(0, seq_id, stock).view(3, 2)
    train = ex.precompute_reference(policy, examples, collator, batch_size=2)
    # the reference is the starting policy's summed log-probs, pair by pair
    torch.testing.assert_close(torch.stack([e["ref_logps"] for e in train]), stock_seq,
                               rtol=1e-5, atol=1e-5)
    # a reference that differs from the policy, so the DPO term is not at log 2
    for j, e in enumerate(train):
        e["ref_logps"] = e["ref_logps"] + torch.tensor([0.4, -0.3]) * (j + 1)

    trainer = ex.make_trainer(policy, collator, train, output_dir=str(tmp_path), steps=1,
                              spec=OPTIONS)
    inputs = collator(train)
    batch = inputs["batch"]
    loss, metrics = trainer.compute_loss(policy, inputs, return_outputs=True)
    direct, direct_metrics = preference_loss(policy.hidden_states(batch), policy.lm_head_weight(),
                                             batch.target_ids, batch.seq_id, batch.ref_logps,
                                             OPTIONS, num_pairs=3)
    assert torch.equal(loss, direct)
    for name, value in direct_metrics.items():
        assert torch.equal(metrics[name], value), name
    ref = torch.stack([e["ref_logps"] for e in train])
    slow, _ = dpo_sft_loss(stock, seq_id, ref, OPTIONS)
    torch.testing.assert_close(metrics["policy_logps"], stock_seq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, slow, rtol=1e-5, atol=1e-6)
    assert abs(float(metrics["dpo_loss"]) - 0.6931) > 0.05


def dataset_dpo_loss(policy, collator, examples, spec):
    with torch.no_grad():
        return float(policy.loss(collator(examples)["batch"], spec)[1]["dpo_loss"])


def test_trainer_steps_lower_the_loss(tmp_path):
    """Eight steps of a TRL-style weighted mix (MPO's sigmoid + bco_pair)."""
    policy, _, collator, examples = setup(n_pairs=8, seed=1)
    train = ex.precompute_reference(policy, examples, collator)
    spec = LossSpec(beta=0.5, loss_type=["sigmoid", "bco_pair"], loss_weights=[0.8, 0.2])
    before = dataset_dpo_loss(policy, collator, train, spec)
    trainer = ex.make_trainer(policy, collator, train, output_dir=str(tmp_path), steps=8,
                              batch_size=4, lr=3e-3, spec=spec)
    trainer.train()
    after = dataset_dpo_loss(policy.eval(), collator, train, spec)
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 8
    assert all("dpo/reward_accuracy" in log and "dpo/margins" in log for log in logs)
    # the reference is the starting policy: every type starts from its value at zero log-ratios
    assert logs[0]["loss"] == pytest.approx(before, abs=1e-3)
    assert after < before - 0.1, (before, after, [log["loss"] for log in logs])
