"""Stock TRL ``DPOTrainer`` against ``TPODPOTrainer`` on the same model, pairs and settings.

    python -m benchmarks.trl_side_by_side            # CPU: tiny Qwen2-VL, short and long prompts
    python -m benchmarks.trl_side_by_side --smoke    # seconds

One run builds both trainers (``trl.DPOTrainer`` 1.16 and ``tpo_fast.integrations.trl
.TPODPOTrainer``) from the same model folder, ``DPOConfig`` and TRL-format image dataset
(examples/trl_dpo.py: zen-image's layout), for each prompt length: ``short`` (the question) and
``long`` (``--context-words`` words of text before it, where sharing the prompt pays). A step
of an arm is what the Trainer does per optimizer step: collate the step's pairs (the
processor's image and text work), ``training_step`` (the policy and the reference forward,
the loss, backward), the optimizer step. Arms run interleaved (rep 1 of both arms, then rep
2, ...), so load on a shared machine falls on both alike; each arm's first step is a warm-up,
untimed, and its loss is checked against the other arm's first step (same starting weights,
same pairs).

Reported per arm and prompt length: median step time and spread, pairs/s (pairs per step ÷
median step time) and peak memory of a step (CUDA: the allocator's peak above its level before
the step; CPU: the resident set's peak above its level before the step, sampled every 5 ms, with
glibc's mmap threshold fixed at 64 KiB so freed tensors leave the resident set —
``benchmarks.train_throughput.measured_step``), and the load average before and after.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.harness import failure, write_result
from benchmarks.train_throughput import fix_malloc_threshold, load_now, measured_step

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("stock_trl", "tpo_fast")


def _example():
    spec = importlib.util.spec_from_file_location("trl_dpo", ROOT / "examples" / "trl_dpo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Arm:
    """One trainer, stepped by hand over a fixed list of micro-batches of examples."""

    def __init__(self, name, trainer_class, folder, dataset, processor, args):
        self.name = name
        self.trainer = trainer_class(model=str(folder), args=args, train_dataset=dataset,
                                     processing_class=processor)
        t = self.trainer
        t.create_optimizer_and_scheduler(num_training_steps=10 ** 6)
        t.model.train()
        t.current_gradient_accumulation_steps = 1  # set by Trainer.train's loop otherwise
        rows = [dataset[i] for i in range(len(dataset))]
        n = args.per_device_train_batch_size
        self.batches = [rows[i:i + n] for i in range(0, len(rows) - n + 1, n)]
        self.k = 0

    def step(self) -> float:
        t = self.trainer
        examples = self.batches[self.k % len(self.batches)]
        self.k += 1
        inputs = t.data_collator([dict(e) for e in examples])
        loss = t.training_step(t.model, inputs)
        t.optimizer.step()
        t.optimizer.zero_grad(set_to_none=True)
        return float(loss)


def run_length(ex, folder, name: str, context_words: int, pairs_per_step: int, reps: int,
               out: Path) -> dict:
    from trl import DPOConfig, DPOTrainer

    from tpo_fast.integrations.trl import TPODPOTrainer

    dataset = ex.image_preference_dataset(n_rows=pairs_per_step * 2, seed=0,
                                          context_words=context_words)
    arms = {}
    for arm, cls in zip(ARMS, (DPOTrainer, TPODPOTrainer)):
        args = DPOConfig(output_dir=str(out / arm), per_device_train_batch_size=pairs_per_step,
                         report_to=[], use_cpu=not torch.cuda.is_available(),
                         save_strategy="no", learning_rate=1e-6, beta=0.1, bf16=False,
                         gradient_checkpointing=False, max_length=None, seed=0)
        arms[arm] = Arm(arm, cls, folder, dataset, ex.image_processor_only(folder), args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    first = {a: arms[a].step() for a in ARMS}  # warm-up; same weights, same pairs
    pairs = arms["tpo_fast"].trainer.data_collator([dict(e) for e in arms["tpo_fast"].batches[0]])
    prompt_tokens = sum(len(p) for p in pairs["pairs"].prompt_ids) / pairs_per_step
    times = {a: [] for a in ARMS}
    peaks = {a: [] for a in ARMS}
    for _ in range(reps):
        for a in ARMS:
            seconds, peak, _ = measured_step(arms[a].step, device)
            times[a].append(seconds)
            peaks[a].append(peak)
    result = {"context_words": context_words, "pairs_per_step": pairs_per_step,
              "mean_prompt_tokens": prompt_tokens, "first_step_loss": first, "arms": {}}
    for a in ARMS:
        ts = sorted(times[a])
        median = ts[len(ts) // 2]
        result["arms"][a] = {"median_s": median, "min_s": ts[0], "max_s": ts[-1],
                             "pairs_per_s": pairs_per_step / median,
                             "peak_memory_bytes": max(p for p in peaks[a] if p is not None)
                             if any(p is not None for p in peaks[a]) else None}
    a, b = first["stock_trl"], first["tpo_fast"]
    result["first_step_losses_equal"] = abs(a - b) <= 1e-4 * max(1.0, abs(a))
    result["speedup_pairs_per_s"] = (result["arms"]["tpo_fast"]["pairs_per_s"]
                                     / result["arms"]["stock_trl"]["pairs_per_s"])
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--frame-size", type=int, default=56,
                        help="the processor's image side (min = max pixels = side²)")
    parser.add_argument("--pairs-per-step", type=int, default=4)
    parser.add_argument("--context-words", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--note", default="", help="what else ran on the machine")
    parser.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.hidden, args.layers, args.frame_size = 32, 2, 16
        args.pairs_per_step, args.context_words, args.reps = 2, 64, 1
    fix_malloc_threshold()
    ex = _example()
    start, load_before = time.time(), load_now()
    lengths = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = ex.tiny_folder(tmp / "model", hidden=args.hidden, layers=args.layers,
                                frame_size=args.frame_size)
        for name, words in (("short", 0), ("long", args.context_words)):
            try:
                lengths[name] = run_length(ex, folder, name, words, args.pairs_per_step,
                                           args.reps, tmp / name)
            except Exception as e:  # keep the other length's result
                lengths[name] = failure(e)
            payload = {"settings": vars(args), "memory": "CUDA allocator peak" if
                       torch.cuda.is_available() else "CPU resident-set peak above the step's "
                       "start (5 ms sampling)", "load_before": load_before,
                       "load_after": load_now(), "wall_s": time.time() - start,
                       "note": args.note, "complete": len(lengths) == 2, "lengths": lengths}
            path = write_result("trl_side_by_side", payload, args.out)
    for name, r in lengths.items():
        if "arms" in r:
            mib = {a: (v["peak_memory_bytes"] or 0) / 2 ** 20 for a, v in r["arms"].items()}
            print(name, f"prompt ≈ {r['mean_prompt_tokens']:.0f} tokens;",
                  {a: f"{v['pairs_per_s']:.2f} pairs/s, {v['median_s']:.3f} s/step, "
                      f"peak {mib[a]:.0f} MiB" for a, v in r["arms"].items()},
                  f"speedup {r['speedup_pairs_per_s']:.2f}x")
        else:
            print(name, r)
    print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
