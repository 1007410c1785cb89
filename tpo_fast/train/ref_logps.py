"""``tpo-fast ref-logps``: the reference model's summed log-probs of every pair, stored with the
pairs, so ``train`` needs no live reference model (one no-grad pass over the packed path).

The pairs file is rewritten atomically (temporary file + rename) with ``ref_logps: [chosen,
rejected]`` added to each pair; every other field is kept. A LLaVA-NeXT ``.json`` list is
written as JSONL next to it (``<name>.jsonl``) unless an output path is given.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from tpo_fast.config import TrainConfig


def output_path(pairs: Path, out: str | None) -> Path:
    if out:
        return Path(out)
    return pairs if pairs.suffix == ".jsonl" else pairs.with_suffix(".jsonl")


def _process_group() -> tuple[int, int, torch.device | None]:
    """(rank, world, device): under a launcher (torchrun / deepspeed) join its group and use
    this rank's GPU; a plain run is one process and needs no group."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, None
    from tpo_fast.train.setup import init_distributed

    return init_distributed()


@torch.no_grad()
def compute_ref_logps(cfg: TrainConfig, out: str | None = None, device: str | None = None,
                      progress: bool = True) -> Path:
    """Score every valid pair with the configured (starting) model; returns the written file.

    Under a launcher each of the N ranks loads the model whole (no ZeRO: scoring keeps no
    optimizer state, and a 7B model fits one GPU), scores its shard of the packing plan's
    micro-batches, and rank 0 writes the one merged file. With
    ``deepspeed.sequence_parallel_size`` > 1 the ranks of an SP group score the same
    micro-batch split along its tokens, as in training (a longer pair than one rank holds)."""
    import torch.distributed as dist

    from tpo_fast.data.dataset import TPODataset
    from tpo_fast.data.pairs import read_pairs_config, write_pairs_atomic
    from tpo_fast.models import PreferenceModel
    from tpo_fast.packing import plan_bins
    from tpo_fast.train.setup import enable_sequence_parallel, load_tokenizer_and_model

    rank, world, rank_device = _process_group()
    source = Path(cfg.data.train)
    records, skipped = read_pairs_config(cfg.data)
    tokenizer, model, _ = load_tokenizer_and_model(cfg, ds_config=None, role="score")
    device = torch.device(device) if device else rank_device or torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    policy = PreferenceModel(model.to(device).eval(),
                             attention_backend=cfg.model.attention_backend)
    enable_sequence_parallel(cfg, policy)  # the training layout (an SP group, one batch)
    sp_size = cfg.deepspeed.sequence_parallel_size
    dp_world, dp_rank = world // sp_size, rank // sp_size
    dataset = TPODataset(records, policy, tokenizer, cfg.data)
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
    target = output_path(source, out)
    if rank == 0:
        _write(dataset, scores, target, write_pairs_atomic)
        left_out = len(skipped) + len(dataset.skipped)
        print(f"tpo-fast ref-logps: scored {len(scores)} of {len(dataset.records)} pairs "
              f"-> {target}"
              + (f" on {world} ranks" if world > 1 else "")
              + (f"; {left_out} invalid pair(s) left out of the file" if left_out else "")
              + (f"; {len(plan.dropped)} over-long pair(s) kept without ref_logps"
                 if len(plan.dropped) else ""), file=sys.stderr)
    if world > 1:
        dist.barrier()
    return target


def _write(dataset, scores: dict, target: Path, write_pairs_atomic) -> None:
    objects = []
    for i, record in enumerate(dataset.records):
        obj = dict(record.raw)
        if i in scores:
            obj["ref_logps"] = scores[i]
        else:  # over the token budget: left without (train drops it as well)
            obj.pop("ref_logps", None)
        objects.append(obj)
    write_pairs_atomic(target, objects)
