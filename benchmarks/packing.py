"""Packing planner benchmark: native (C++) vs the numpy oracle (naive.py) on TPO-like lengths.

    python -m benchmarks.packing                 # 100k pairs; writes benchmarks/results/
    python -m benchmarks.packing --smoke         # seconds; CI runs this

Measures planning time of both backends on the same input (and checks that their plans are
identical), the plan's mean fill (tokens / budget) and rank imbalance (Σ_steps max rank cost /
Σ_steps mean rank cost), and the index-building time of one micro-batch. Targets: native >= 20x
the numpy oracle's speed, fill >= 0.95, imbalance <= 1.05.
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np

from benchmarks.harness import timed, write_result
from tpo_fast.packing import build_indices, plan_bins
from tpo_fast.synthetic.packing import synthetic_lengths

TARGETS = {"speedup": (">=", 20.0), "fill": (">=", 0.95), "imbalance": ("<=", 1.05)}
PLAN_FIELDS = ("bin_offsets", "pair_index", "bin_tokens", "bin_cost", "bin_padding", "dropped")


def run(pairs: int, token_budget: int, world_size: int, seed: int, reps: int,
        naive_reps: int, sweep: bool) -> dict:
    lens = synthetic_lengths(pairs, seed=seed)

    def plan(backend: str):
        return plan_bins(*lens, token_budget, world_size, seed, backend=backend)

    native, naive = plan("native"), plan("naive")
    for f in PLAN_FIELDS:
        if not np.array_equal(getattr(native, f), getattr(naive, f)):
            raise AssertionError(f"native and naive plans differ in {f}")
    t_native = timed(lambda: plan("native"), reps=reps)
    t_naive = timed(lambda: plan("naive"), reps=naive_reps, warmup=0)
    summary = native.summary()

    # One full micro-batch: the first rank's bin of the first step.
    first = native.step(0)[0]
    mb = [x[first] for x in lens]
    t_ix_native = timed(lambda: build_indices(*mb, backend="native"), reps=max(reps, 20))
    t_ix_naive = timed(lambda: build_indices(*mb, backend="naive"), reps=max(reps, 20))

    values = {"speedup": t_naive["median_s"] / t_native["median_s"],
              "fill": summary["fill"], "imbalance": summary["imbalance"]}
    result = {
        "config": {"pairs": pairs, "token_budget": token_budget, "world_size": world_size,
                   "seed": seed, "prompt_tokens": [4096, 28672], "response_tokens": [16, 1024],
                   "response_distribution": "log-uniform"},
        "plan_time": {"native": t_native, "naive": t_naive},
        "plans_identical": True,
        "summary": summary,
        "build_indices_time": {"pairs": len(first), "tokens": int(sum(x.sum() for x in mb)),
                               "native": t_ix_native, "naive": t_ix_naive},
        "targets": {k: {"target": f"{op} {t}", "value": values[k],
                        "met": values[k] >= t if op == ">=" else values[k] <= t}
                    for k, (op, t) in TARGETS.items()},
    }
    if sweep:
        rows = []
        for budget in (32768, 65536, 131072):
            for w in (1, 8, 64):
                args = (*lens, budget, w, seed)
                t = timed(lambda args=args: plan_bins(*args, backend="native"), reps=3)
                s = plan_bins(*args, backend="native").summary()
                rows.append({"token_budget": budget, "world_size": w,
                             "native_median_s": t["median_s"],
                             **{k: s[k] for k in ("bins", "pairs_per_bin", "fill", "imbalance",
                                                  "worst_step_imbalance", "padding_bins")}})
        result["sweep_native"] = rows
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=100_000)
    ap.add_argument("--token-budget", type=int, default=65536)
    ap.add_argument("--world-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--naive-reps", type=int, default=3)
    ap.add_argument("--smoke", action="store_true",
                    help="2,000 pairs, one rep, no sweep, result to a temporary file")
    ap.add_argument("--out", help="result path (default: benchmarks/results/packing-<device>.json)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.pairs, args.reps, args.naive_reps = 2000, 1, 1
    result = run(args.pairs, args.token_budget, args.world_size, args.seed, args.reps,
                 args.naive_reps, sweep=not args.smoke)
    out = args.out or (tempfile.mkdtemp(prefix="tpo_bench_") + "/packing.json"
                       if args.smoke else None)
    path = write_result("packing", result, out)

    t = result["plan_time"]
    print(f"{args.pairs:,} pairs, budget {args.token_budget:,}, {args.world_size} ranks")
    print(f"  plan: native {t['native']['median_s'] * 1e3:.1f} ms, naive "
          f"{t['naive']['median_s'] * 1e3:.1f} ms (identical plans)")
    ix = result["build_indices_time"]
    print(f"  build_indices ({ix['pairs']} pairs, {ix['tokens']:,} tokens): native "
          f"{ix['native']['median_s'] * 1e6:.0f} us, naive "
          f"{ix['naive']['median_s'] * 1e6:.0f} us")
    for k, v in result["targets"].items():
        verdict = "met" if v["met"] else "MISSED"
        print(f"  {k:10s} {v['value']:.4f}  target {v['target']:8s} {verdict}")
    for row in result.get("sweep_native", []):
        print(f"  sweep budget {row['token_budget']:>6} ranks {row['world_size']:>2}: fill "
              f"{row['fill']:.4f} imbalance {row['imbalance']:.4f} "
              f"({row['native_median_s'] * 1e3:.1f} ms)")
    print(f"  written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
