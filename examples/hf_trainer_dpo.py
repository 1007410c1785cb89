"""Fast DPO of a video LLM inside your own Hugging Face ``Trainer``.

    python examples/hf_trainer_dpo.py                 # a tiny random Qwen2-VL, CPU, seconds
    python examples/hf_trainer_dpo.py --loss-type sigmoid bco_pair --loss-weights 0.8 0.2

Three pieces, each a few lines, replace TRL's two-rows-per-pair forward:

* ``PackedPairCollator`` turns examples ``{"question", "video", "chosen", "rejected"[,
  "ref_logps"]}`` into one ``PackedBatch`` per micro-batch: each pair's prompt (with the video's
  tokens) once, its two responses after it, the family's position ids
  (``tpo_fast.data.PairPacker.pack_examples``).
* ``FastDPOTrainer.compute_loss`` calls ``PreferenceModel.loss(batch, spec)`` — the same batch →
  loss path as ``tpo-fast train``: the packed, prefix-shared forward (vision tower once per
  video, no [tokens × vocab] logits) and the fused LM head + log-prob + DPO/SFT loss
  (``tpo_fast.kernels.preference_loss``: Triton on CUDA, chunked torch elsewhere), with any
  loss type or weighted mix of them (a ``tpo_fast.kernels.LossSpec``).
* ``precompute_reference`` scores every pair once with the starting policy, so training needs
  no reference model in memory.

Trainer settings it relies on: ``remove_unused_columns=False`` (the examples are not model
kwargs) and no ``label_names`` (the loss needs none). The loss of a micro-batch is its own
mean (``loss_is_scaled_for_ga = False``: the Trainer divides by the accumulation steps).
Your own data: give each example its preprocessed video inputs (what the family's processor
makes: ``pixel_values_videos`` and, for Qwen-VL, ``video_grid_thw``) and text; the collator
does the rest.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from tpo_fast.kernels import LossSpec
from transformers import Trainer, TrainingArguments

from tpo_fast.data.packer import PairPacker
from tpo_fast.models import PreferenceModel
from tpo_fast.packing import PackedBatch


class PackedPairCollator:
    """examples -> ``{"batch": PackedBatch}`` (one micro-batch; token order per pair
    [prompt | chosen | rejected]). ``ref_logps`` [2] per example (summed reference log-probs
    of chosen, rejected) is packed when every example has it."""

    def __init__(self, packer: PairPacker):
        self.packer = packer  # PairPacker(policy.adapter, tokenizer): tokenises and packs

    def __call__(self, examples: list[dict]) -> dict:
        return {"batch": self.packer.pack_examples(examples)}


class FastDPOTrainer(Trainer):
    """A ``Trainer`` whose model is a ``PreferenceModel`` and whose loss is the fused DPO/SFT
    loss. ``spec``: a ``LossSpec`` (e.g. ``LossSpec(beta=0.2, sft_weight=1.0,
    loss_type=["sigmoid", "bco_pair"], loss_weights=[0.8, 0.2])``; default ``LossSpec()``).
    Logs the mean DPO loss, NLL, rewards, margins and reward accuracy of the pairs seen since
    the last log."""

    loss_is_scaled_for_ga = False  # a per-micro-batch mean; the Trainer divides by GA steps

    def __init__(self, *args, spec: LossSpec | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.spec = LossSpec() if spec is None else spec
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        batch: PackedBatch = inputs["batch"]
        # the whole loss inside the (possibly DDP-wrapped) model's forward: the LM head is used
        # there, so DDP's gradient hooks see every parameter exactly once
        loss, metrics = model(batch, loss=self.spec)
        if model.training:
            self._record(metrics)
        return (loss, metrics) if return_outputs else loss

    def _record(self, metrics: dict) -> None:
        for name in ("dpo_loss", "nll_loss"):
            self._sums[name] += float(metrics[name])
            self._counts[name] += 1
        for name in ("chosen_rewards", "rejected_rewards", "margins", "reward_accuracy"):
            self._sums[name] += float(metrics[name].sum())
            self._counts[name] += metrics[name].numel()

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs:  # a training log: add the pair metrics since the last one
            logs.update({f"dpo/{k}": self._sums[k] / self._counts[k] for k in self._sums})
            self._sums.clear()
            self._counts.clear()
        super().log(logs, *args, **kwargs)


@torch.no_grad()
def precompute_reference(policy: PreferenceModel, examples: list[dict], collator,
                         batch_size: int = 4) -> list[dict]:
    """Adds ``ref_logps`` (the starting policy's summed log-probs of chosen, rejected) to every
    example: TPO's precomputed reference — no reference model during training."""
    was_training = policy.training
    policy.eval()
    out = []
    for start in range(0, len(examples), batch_size):
        part = [{k: v for k, v in e.items() if k != "ref_logps"}
                for e in examples[start:start + batch_size]]
        ref = policy.policy_logps(collator(part)["batch"]).cpu()
        out += [dict(e, ref_logps=r) for e, r in zip(part, ref)]
    policy.train(was_training)
    return out


# ---- a runnable demonstration on a tiny random model -------------------------------------------

def tiny_examples(family: str, config, n: int, seed: int = 0) -> list[dict]:
    """n synthetic pairs: random videos of 2-6 frames, questions and answers from the tiny
    tokenizer's words."""
    from tpo_fast.models.tiny import random_video

    step = 2 if family.startswith("qwen") else 1  # Qwen-VL: frames come in temporal pairs
    questions = ["what colour was the circle ?", "how many shapes appeared ?",
                 "which shape moved left ?", "what happened after the red star vanished ?"]
    answers = ["the circle was red", "three shapes", "the square moved left", "a blue star",
               "it was green", "no shape moved", "yes", "the triangle appeared"]
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        frames = step * (1 + int(torch.randint(0, 3, (1,), generator=g)))
        a, b = torch.randperm(len(answers), generator=g)[:2].tolist()
        out.append({"question": questions[i % len(questions)],
                    "video": random_video(family, config, frames, seed=seed * 1000 + i),
                    "chosen": answers[a], "rejected": answers[b]})
    return out


def build_tiny(family: str = "qwen2_vl", seed: int = 0):
    from tpo_fast.models.tiny import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer(family)
    model = tiny_model(family, tokenizer, seed=seed)
    return PreferenceModel(model).train(), tokenizer


def make_trainer(policy: PreferenceModel, collator, train_examples: list[dict], *,
                 output_dir: str, steps: int, batch_size: int = 4, lr: float = 3e-3,
                 spec: LossSpec | None = None) -> FastDPOTrainer:
    """A FastDPOTrainer with plain settings (constant lr, a log every step, no checkpoints)."""
    args = TrainingArguments(output_dir=output_dir, max_steps=steps,
                             per_device_train_batch_size=batch_size, learning_rate=lr,
                             lr_scheduler_type="constant", logging_steps=1, save_strategy="no",
                             report_to=[], remove_unused_columns=False, seed=0,
                             use_cpu=not torch.cuda.is_available(), disable_tqdm=True)
    return FastDPOTrainer(model=policy, args=args, train_dataset=train_examples,
                          data_collator=collator, spec=spec)


def main(argv=None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", default="qwen2_vl")
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--sft-weight", type=float, default=0.0)
    parser.add_argument("--loss-type", nargs="+", default=["sigmoid"])
    parser.add_argument("--loss-weights", nargs="+", type=float, default=None)
    parser.add_argument("--output-dir", default="runs/hf_trainer_example")
    args = parser.parse_args(argv)

    policy, tokenizer = build_tiny(args.family)
    collator = PackedPairCollator(PairPacker(policy.adapter, tokenizer))
    examples = tiny_examples(args.family, policy.model.config, args.pairs)
    train = precompute_reference(policy, examples, collator)
    loss_type = args.loss_type[0] if len(args.loss_type) == 1 else args.loss_type
    trainer = make_trainer(policy, collator, train, output_dir=args.output_dir,
                           steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                           spec=LossSpec(beta=args.beta, sft_weight=args.sft_weight,
                                         loss_type=loss_type, loss_weights=args.loss_weights))
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    print("loss per step:", " ".join(f"{x:.4f}" for x in losses))
    return losses


if __name__ == "__main__":
    main()
