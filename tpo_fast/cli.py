"""The ``tpo-fast`` command line. Subcommands import what they need when they run."""

from __future__ import annotations

import argparse
import json
import sys
import time


def _add_plan_args(p: argparse.ArgumentParser, pairs: int, world_size: int) -> None:
    p.add_argument("--pairs", type=int, default=pairs, help="synthetic pairs to plan")
    p.add_argument("--token-budget", type=int, default=65536, help="tokens per micro-batch")
    p.add_argument("--world-size", type=int, default=world_size, help="data-parallel ranks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epoch", type=int, default=0)
    p.add_argument("--drop-overlong", action="store_true",
                   help="skip pairs over the token budget instead of failing")
    p.add_argument("--backend", choices=("auto", "native", "reference"), default="auto")
    p.add_argument("--json", metavar="PATH", help="also write the summary as JSON")


def cmd_plan(args: argparse.Namespace) -> int:
    """Plan packed micro-batches for a synthetic TPO-like preference set and summarise them."""
    from tpo_fast.packing import build_indices, get_backend, plan_bins, synthetic_lengths

    prompt, chosen, rejected = synthetic_lengths(args.pairs, seed=args.seed)
    backend = get_backend(args.backend).__name__
    backend = "reference" if backend.endswith("reference") else "native"
    start = time.perf_counter()
    plan = plan_bins(prompt, chosen, rejected, args.token_budget, args.world_size, args.seed,
                     epoch=args.epoch, drop_overlong=args.drop_overlong, backend=args.backend)
    seconds = time.perf_counter() - start
    summary = {"backend": backend, "plan_seconds": round(seconds, 4), **plan.summary()}

    first = plan.step(0)[0]
    ix = build_indices(prompt[first], chosen[first], rejected[first], backend=args.backend)
    summary["first_micro_batch"] = {
        "pairs": ix.n_pairs,
        "packed_tokens": ix.num_tokens,
        "unpacked_tokens": int((2 * prompt[first] + chosen[first] + rejected[first]).sum()),
        "scored_tokens": len(ix.logit_index),
        "max_seqlen_q": ix.max_seqlen_q,
        "max_seqlen_k": ix.max_seqlen_k,
    }

    print(f"planned {summary['planned']:,} of {summary['pairs']:,} pairs into "
          f"{summary['bins']:,} micro-batches = {summary['steps']:,} steps x "
          f"{summary['world_size']} ranks ({backend} packer, {seconds * 1e3:.1f} ms)")
    print(f"  fill {summary['fill']:.4f} of a {args.token_budget:,}-token budget, "
          f"{summary['pairs_per_bin']:.2f} pairs per micro-batch")
    print(f"  rank imbalance {summary['imbalance']:.4f} (worst step "
          f"{summary['worst_step_imbalance']:.4f}); dropped {summary['dropped_overlong']}, "
          f"padding micro-batches {summary['padding_bins']}")
    fm = summary["first_micro_batch"]
    print(f"  first micro-batch: {fm['pairs']} pairs, {fm['packed_tokens']:,} packed tokens "
          f"(unpacked rows would be {fm['unpacked_tokens']:,}), {fm['scored_tokens']:,} scored")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
        print(f"  summary written to {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tpo-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    plan = sub.add_parser("plan", help=cmd_plan.__doc__)
    _add_plan_args(plan, pairs=10_000, world_size=8)
    plan.set_defaults(func=cmd_plan)
    demo = sub.add_parser(
        "demo",
        help="the embedded default run (until the trainer lands: the packing planner on a "
             "synthetic preference set)",
    )
    _add_plan_args(demo, pairs=10_000, world_size=8)
    demo.set_defaults(func=cmd_plan)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError) as exc:  # bad input: one clear line, no traceback
        print(f"tpo-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
