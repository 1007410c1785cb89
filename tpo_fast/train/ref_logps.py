"""``tpo-fast ref-logps``: the reference model's summed log-probs of every pair, stored with the
pairs, so ``train`` needs no live reference model (one no-grad pass over the packed path).

The user's pairs file is never changed unless asked: the scored pairs go to a new JSONL file
beside it (``<stem>.ref_logps.jsonl``, or ``--out``), written atomically (temporary file +
rename), each pair with ``ref_logps: [chosen, rejected]`` added and every other field kept.
``in_place=True`` (``--in-place``) rewrites a ``.jsonl`` pairs file itself, still atomically, and
keeps every line it could not score (invalid JSON, a missing video, ...) exactly as it was, at
its place; in a new file such lines are left out (they stay in the untouched input) and counted.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from tpo_fast.config import TrainConfig


def output_path(pairs: Path, out: str | None, in_place: bool = False) -> Path:
    """Where the scored pairs go: ``out``, the input itself (``in_place``, JSONL only), or
    ``<stem>.ref_logps.jsonl`` beside the input."""
    pairs = Path(pairs)
    if in_place:
        if out:
            raise ValueError("ref-logps: --out and --in-place exclude each other")
        if pairs.suffix != ".jsonl":
            raise ValueError(f"ref-logps --in-place rewrites a .jsonl pairs file; {pairs} is a "
                             "JSON list: write a new file (the default) or --out FILE")
        return pairs
    target = Path(out) if out else pairs.with_name(pairs.stem + ".ref_logps.jsonl")
    if target.resolve() == pairs.resolve():
        raise ValueError(f"ref-logps: the output {target} is the input file; pass --in-place to "
                         "rewrite it (lines that cannot be scored are kept as they were)")
    return target


def _process_group(timeout_minutes: float) -> tuple[int, int, torch.device | None]:
    """(rank, world, device): under a launcher (torchrun / deepspeed) join its group and use
    this rank's GPU; a plain run is one process and needs no group."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, None
    from tpo_fast.train.setup import init_distributed

    return init_distributed(timeout_minutes)


@torch.no_grad()
def compute_ref_logps(cfg: TrainConfig, out: str | None = None, device: str | None = None,
                      progress: bool = True, in_place: bool = False) -> Path:
    """Score every valid pair with the configured (starting) model; returns the written file
    (``output_path``: a new file unless ``in_place``).

    Under a launcher each of the N ranks loads the model whole (no ZeRO: scoring keeps no
    optimizer state, and a 7B model fits one GPU), scores its shard of the packing plan's
    micro-batches, and rank 0 writes the one merged file. With
    ``deepspeed.sequence_parallel_size`` > 1 the ranks of an SP group score the same
    micro-batch split along its tokens, as in training (a longer pair than one rank holds)."""
    import torch.distributed as dist

    from tpo_fast.data.dataset import TPODataset
    from tpo_fast.data.packer import PairPacker
    from tpo_fast.data.pairs import read_pairs_config, write_pairs_atomic
    from tpo_fast.models import PreferenceModel
    from tpo_fast.packing import plan_bins
    from tpo_fast.train.setup import enable_sequence_parallel, load_tokenizer_and_model

    source = Path(cfg.data.train)
    target = output_path(source, out, in_place)  # refused before any work
    rank, world, rank_device = _process_group(cfg.deepspeed.timeout_minutes)
    records, skipped = read_pairs_config(cfg.data)
    tokenizer, model, _ = load_tokenizer_and_model(cfg, ds_config=None, role="score")
    device = torch.device(device) if device else rank_device or torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    policy = PreferenceModel(model.to(device).eval(),
                             attention_backend=cfg.model.attention_backend)
    enable_sequence_parallel(cfg, policy)  # the training layout (an SP group, one batch)
    sp_size = cfg.deepspeed.sequence_parallel_size
    dp_world, dp_rank = world // sp_size, rank // sp_size
    dataset = TPODataset(records, PairPacker(policy.adapter, tokenizer), cfg.data, cfg.decode,
                         device=policy.device)
    p, c, r = dataset.lengths()
    plan = plan_bins(p, c, r, cfg.data.token_budget * sp_size, dp_world, cfg.run.seed,
                     drop_overlong=cfg.data.drop_overlong)
    mine = [b for b in range(dp_rank, plan.num_bins, dp_world) if not plan.bin_padding[b]]
    scores: dict[int, list[float]] = {}
    bins = mine
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bins = tqdm(mine, desc="ref log-probs" + (f" (rank 0 of {world})" if world > 1 else ""),
                    unit="batch", dynamic_ncols=True)
    try:
        for b in bins:
            ids = plan.bin(b)
            batch = policy.shard(dataset.batch(ids)).to(device, non_blocking=True)  # pinned
            logps = policy.policy_logps(batch).cpu()
            for i, pair in enumerate(ids):
                scores[int(pair)] = [float(logps[i, 0]), float(logps[i, 1])]
    finally:
        dataset.close()
    if world > 1:
        shards = [None] * world
        dist.all_gather_object(shards, scores)
        scores = {k: v for shard in shards for k, v in shard.items()}
    if rank == 0:
        objects = _scored_objects(dataset, scores)
        if in_place:
            _rewrite_in_place(source, dataset.records, objects)
        else:
            write_pairs_atomic(target, objects)
        invalid = len(skipped) + len(dataset.skipped)
        kept = ("kept as they were" if in_place
                else f"left out of it (still in {source}; first: "
                     f"{(skipped + dataset.skipped)[0]})" if invalid else "")
        print(f"tpo-fast ref-logps: scored {len(scores)} of {len(dataset.records)} pairs "
              f"-> {target}"
              + (f" on {world} ranks" if world > 1 else "")
              + (f"; {invalid} invalid pair(s) {kept}" if invalid else "")
              + (f"; {len(plan.dropped)} over-long pair(s) kept without ref_logps"
                 if len(plan.dropped) else ""), file=sys.stderr)
    if world > 1:
        dist.barrier()
    return target


def _scored_objects(dataset, scores: dict) -> list[dict]:
    objects = []
    for i, record in enumerate(dataset.records):
        obj = dict(record.raw)
        if i in scores:
            obj["ref_logps"] = scores[i]
        else:  # over the token budget: left without (train drops it as well)
            obj.pop("ref_logps", None)
        objects.append(obj)
    return objects


def _rewrite_in_place(path: Path, records, objects: list[dict]) -> None:
    """Rewrite the JSONL file ``path`` atomically: each scored record's line replaced by its
    object, every other line (blank, invalid, unreadable video) kept byte for byte."""
    import json

    from tpo_fast.data.pairs import atomic_text_file

    by_line = {}
    for record, obj in zip(records, objects):
        line = int(record.source.rsplit(":", 1)[1])
        by_line[line] = json.dumps(obj, ensure_ascii=False)
    with open(path, encoding="utf-8", newline="") as f:
        lines = f.read().splitlines(keepends=True)
    with atomic_text_file(path, newline="") as f:
        for n, line in enumerate(lines, start=1):
            if n in by_line:  # the line's own ending (\n, \r\n) is kept
                body = line.rstrip("\r\n")
                line = by_line[n] + (line[len(body):] or "\n")
            f.write(line)
