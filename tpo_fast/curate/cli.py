"""``tpo-fast curate``: build TPO preference pairs from raw videos.

    tpo-fast curate configs/curate_synthetic.yaml [key=value ...] [--rank R --world-size W]
    tpo-fast curate --videos clips/ policy.path=/models/LLaVA-Video-7B-Qwen2 \\
        query.kind=openai query.model=gpt-4o-mini query.base_url=https://api.openai.com/v1 \\
        query.api_key_env=OPENAI_API_KEY judge.kind=openai ...
    tpo-fast curate --synthetic 4 --output runs/curate_demo     # the synthetic demo
"""

from __future__ import annotations

import argparse
import json
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tpo-fast curate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="a curate YAML config (optional)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. mix.target_size=2000")
    p.add_argument("--videos", help="a folder of videos or a JSONL manifest (input.videos)")
    p.add_argument("--output", help="output folder (run.output_dir)")
    p.add_argument("--rank", type=int, help="this process's rank (default: env RANK or 0)")
    p.add_argument("--world-size", type=int,
                   help="number of processes (default: env WORLD_SIZE or 1)")
    p.add_argument("--synthetic", type=int, metavar="N",
                   help="first write N synthetic videos with known events into "
                        "<output>/synthetic and curate their manifest")
    p.add_argument("--merge-only", action="store_true",
                   help="only merge the finished stage files into pairs.jsonl and summary.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


def _config(args: argparse.Namespace):
    from pathlib import Path

    from tpo_fast.curate.config import load_curate_config

    config, overrides = args.config, list(args.overrides)
    if config and "=" in config:  # no config file, only overrides
        config, overrides = None, [config, *overrides]
    flags = []
    if args.output:
        flags.append(f"run.output_dir={args.output}")
    if args.rank is not None:
        flags.append(f"run.rank={args.rank}")
    if args.world_size is not None:
        flags.append(f"run.world_size={args.world_size}")
    if args.no_progress:
        flags.append("run.progress=false")
    if args.synthetic:
        from tpo_fast.synthetic.curate import make_synthetic_videos

        probe_cfg = load_curate_config(config, [*overrides, *flags, "input.videos=pending"])
        manifest = make_synthetic_videos(Path(probe_cfg.run.output_dir) / "synthetic",
                                         n_videos=args.synthetic)
        flags.append(f"input.videos={manifest}")
    elif args.videos:
        flags.append(f"input.videos={args.videos}")
    return load_curate_config(config, [*overrides, *flags])


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status: 0 done, 1 some items failed (a re-run retries
    them), 2 a bad config or input."""
    from tpo_fast.config import ConfigError
    from tpo_fast.curate.llm import LLMError
    from tpo_fast.curate.pipeline import format_report, merge, run_curation

    args = build_parser().parse_intermixed_args(argv)
    try:
        cfg = _config(args)
        summary = merge(cfg) if args.merge_only else run_curation(cfg)
    except (ConfigError, LLMError, FileNotFoundError) as exc:
        print(f"tpo-fast curate: error: {exc}", file=sys.stderr)
        return 2
    if summary is None:
        rank, world = cfg.rank_world()
        print(f"rank {rank} of {world} done; the last rank to finish merges (or run "
              "--merge-only)")
        return 0
    print(json.dumps(summary, indent=2) if args.json else format_report(summary))
    failed = retriable_failures(summary)
    if failed:
        print(f"tpo-fast curate: {failed} item(s) failed (LLM endpoint or decoding); re-run the "
              "same command to retry them", file=sys.stderr)
        return 1
    return 0


def retriable_failures(summary: dict) -> int:
    """Items that failed in this run and are retried by a re-run (unreadable videos are input
    problems, not counted)."""
    return sum(st["failed"] for rank in summary["ranks"] for name, st in rank["stages"].items()
               if name != "videos")


if __name__ == "__main__":
    sys.exit(main())
