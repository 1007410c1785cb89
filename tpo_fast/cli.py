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
    p.add_argument("--backend", choices=("auto", "native", "naive"), default="auto")
    p.add_argument("--json", metavar="PATH", help="also write the summary as JSON")


def cmd_plan(args: argparse.Namespace) -> int:
    """Plan packed micro-batches for a synthetic TPO-like preference set and summarise them."""
    from tpo_fast.packing import build_indices, get_backend, plan_bins
    from tpo_fast.synthetic.packing import synthetic_lengths

    prompt, chosen, rejected = synthetic_lengths(args.pairs, seed=args.seed)
    backend = get_backend(args.backend).__name__
    backend = "naive" if backend.endswith("naive") else "native"
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


def _config(args: argparse.Namespace):
    from tpo_fast.config import load_config

    return load_config(args.config, args.overrides)


def cmd_train(args: argparse.Namespace) -> int:
    """Train with DPO + SFT (TPO) on a pairs file, as a YAML config and key=value overrides say."""
    from tpo_fast.train.loop import train

    summary = train(_config(args))
    if summary.get("world_size", 1) == 1 or _rank() == 0:
        print(f"tpo-fast train: {summary['steps']} steps in {summary['seconds']:.1f} s; final "
              f"model in {summary['final_model']}")
    return 0


def cmd_ref_logps(args: argparse.Namespace) -> int:
    """Store the reference model's log-probs with the pairs (one no-grad packed pass)."""
    from tpo_fast.train.ref_logps import compute_ref_logps

    compute_ref_logps(_config(args), out=args.out, device=args.device, in_place=args.in_place)
    return 0


def cmd_make_pairs(args: argparse.Namespace) -> int:
    """Write a small synthetic pairs set (colour videos) for the tiny embedded default."""
    from tpo_fast.synthetic.pairs import make_pairs

    path = make_pairs(args.out_dir, n_pairs=args.pairs, n_videos=args.videos, seed=args.seed)
    print(f"tpo-fast make-pairs: wrote {args.pairs} pairs and {args.videos} videos -> {path}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert a LLaVA-NeXT-layout LLaVA-Video folder into transformers' LLaVA-OneVision layout."""
    from tpo_fast.models.llava_video_checkpoint import convert_to_llava_onevision

    out = convert_to_llava_onevision(args.source, args.out, dtype=args.dtype,
                                     overwrite=args.overwrite)
    print(f"tpo-fast convert: {args.source} (LLaVA-NeXT layout) -> {out} "
          "(transformers LlavaOnevisionForConditionalGeneration)")
    return 0


def _curate(argv: list[str]) -> int:
    from tpo_fast.curate.cli import main as curate_main

    return curate_main(argv)


def _rank() -> int:
    import os

    return int(os.environ.get("RANK", 0))


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="a YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="overrides, e.g. loss.beta=0.2 optim.lr=1e-6")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tpo-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    plan = sub.add_parser("plan", help=cmd_plan.__doc__)
    _add_plan_args(plan, pairs=10_000, world_size=8)
    plan.set_defaults(func=cmd_plan)
    demo = sub.add_parser("demo", add_help=False,
                          help="the whole method on a CPU with nothing downloaded (synthetic "
                               "videos, a tiny base, self-curated pairs, TPO, held-out eval); "
                               "`tpo-fast demo --help`")
    demo.add_argument("args", nargs=argparse.REMAINDER)
    ev = sub.add_parser("eval", add_help=False,
                        help="multiple-choice video QA accuracy (Video-MME, MLVU, "
                             "LongVideoBench, synthetic); `tpo-fast eval --help`")
    ev.add_argument("args", nargs=argparse.REMAINDER)
    train = sub.add_parser("train", help=cmd_train.__doc__)
    _add_config_args(train)
    train.set_defaults(func=cmd_train)
    ref = sub.add_parser("ref-logps", help=cmd_ref_logps.__doc__)
    _add_config_args(ref)
    ref.add_argument("--out", help="write the scored pairs here (default: "
                     "<data.train stem>.ref_logps.jsonl beside it; the input is not changed)")
    ref.add_argument("--in-place", action="store_true",
                     help="rewrite the data.train .jsonl itself (atomically; lines that cannot "
                          "be scored are kept as they were)")
    ref.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    ref.set_defaults(func=cmd_ref_logps)
    curate = sub.add_parser("curate", add_help=False,
                            help="build TPO preference pairs from raw videos (self-training "
                                 "curation); `tpo-fast curate --help` for its options")
    curate.add_argument("args", nargs=argparse.REMAINDER)
    curate.set_defaults(func=lambda args: _curate(args.args))
    pairs = sub.add_parser("make-pairs", help=cmd_make_pairs.__doc__)
    pairs.add_argument("out_dir")
    pairs.add_argument("--pairs", type=int, default=48)
    pairs.add_argument("--videos", type=int, default=8)
    pairs.add_argument("--seed", type=int, default=0)
    pairs.set_defaults(func=cmd_make_pairs)
    convert = sub.add_parser("convert", help=cmd_convert.__doc__)
    convert.add_argument("source", help="a LLaVA-Video folder in the LLaVA-NeXT layout")
    convert.add_argument("out", help="the transformers LLaVA-OneVision folder to write")
    convert.add_argument("--dtype", help="float32, bfloat16, ... (default: the checkpoint's)")
    convert.add_argument("--overwrite", action="store_true")
    convert.set_defaults(func=cmd_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["curate"]:  # its own parser (options and key=value overrides)
        return _curate(argv[1:])
    if argv[:1] == ["demo"]:  # its own parser (a YAML config and key=value overrides)
        from tpo_fast.demo import demo_main

        return demo_main(argv[1:])
    if argv[:1] == ["eval"]:
        from tpo_fast.eval.cli import main as eval_main

        return eval_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as exc:  # bad input: one clear line
        print(f"tpo-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from tpo_fast.train.loop import TrainingError

        if not isinstance(exc, TrainingError):
            raise
        print(f"tpo-fast {args.command}: error: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
