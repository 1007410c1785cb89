"""Sequence parallelism for packed prefix-shared micro-batches (DeepSpeed Ulysses).

Ranks form DP × SP groups of consecutive ranks (DeepSpeed's ``parallel_state_sp``). The ranks
of one SP group run the same packed micro-batch, split along the token axis into equal shards
(the last padded): rank ``s`` embeds and runs every non-attention layer on tokens
``[s·L, (s+1)·L)``. In each attention layer DeepSpeed's ``UlyssesSPAttentionHF`` all-to-alls
q/k/v so that every rank holds the whole packed sequence for ``heads / SP`` of the heads; the
prefix-shared attention (kv_index gather, segment offsets) then runs unchanged on it, and the
all-to-all back returns each rank's token shard.

The loss: each rank computes the log-probs of the scored tokens whose predicting hidden state
lies in its shard; ``gather_scored`` joins them into the micro-batch's [N] token log-probs on
every rank, so every rank computes the same loss with the single-rank formula. Its backward
hands each rank the gradient of its own tokens (the loss is replicated, not summed), so each
rank's parameter gradients are its shard's share and DeepSpeed's SP-aware reduction (sum over
the SP group, mean over DP) gives the single-rank gradient.

The vision tower's frames are split over the group too (``encode_split``: frames for LLaVA
families, temporal patches for Qwen2-VL / Qwen2.5-VL; the rows all-gathered); families whose
features cannot be computed piecewise run the whole tower on every rank of the group. Each rank
then scatters the rows of the video tokens in its shard.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from tpo_fast.attention import PACKED_KWARG


@dataclass
class SequenceParallel:
    """One rank's place in its SP group and DeepSpeed's Ulysses attention over that group."""

    group: object  # torch ProcessGroup of the SP ranks
    size: int
    rank: int  # rank within the group
    ulysses: object  # deepspeed UlyssesSPAttentionHF wrapping ``gathered_attention``


def check_heads(text_config, size: int) -> None:
    """Ulysses splits attention heads over the SP group: raise a clear error where it cannot."""
    heads = int(text_config.num_attention_heads)
    kv = int(getattr(text_config, "num_key_value_heads", None) or heads)
    if heads % size:
        fits = [d for d in range(1, heads + 1) if heads % d == 0]
        raise ValueError(
            f"deepspeed.sequence_parallel_size={size} does not divide the model's {heads} "
            f"attention heads (Ulysses gives each rank heads/SP of them); sizes that fit: {fits}")
    if kv % size and size % kv:
        raise ValueError(
            f"deepspeed.sequence_parallel_size={size} and the model's {kv} key/value heads: "
            "one must divide the other (kv heads < SP are replicated SP/kv times, kv heads > SP "
            "are split)")


def language_config(config):
    """The language model's config of a (multimodal) model config: its text config."""
    if hasattr(config, "get_text_config"):
        return config.get_text_config()
    return getattr(config, "text_config", config)  # LongVA's LongVAConfig


def init_sequence_parallel(size: int, config) -> tuple[SequenceParallel | None, object]:
    """(SequenceParallel, DeepSpeed's mpu for ``deepspeed.initialize``) or (None, None) for
    size 1; ``config`` is the model's (or its language model's) config. Needs the process group
    (``deepspeed.init_distributed``) to exist."""
    if size == 1:
        return None, None
    text_config = language_config(config)
    import deepspeed.runtime.sequence_parallel.parallel_state_sp as mpu
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF

    world = dist.get_world_size() if dist.is_initialized() else 1
    if world % size:
        raise ValueError(f"deepspeed.sequence_parallel_size={size} does not divide the "
                         f"{world} processes (ranks form DP x SP groups)")
    check_heads(text_config, size)
    if mpu._SEQUENCE_PARALLEL_GROUP is None:
        mpu.initialize_sequence_parallel(sequence_parallel_size=size)
    elif mpu.get_sequence_parallel_world_size() != size:
        raise ValueError(f"sequence parallel groups of {mpu.get_sequence_parallel_world_size()}"
                         f" already exist in this process; asked for {size}")
    group = mpu.get_sequence_parallel_group()
    heads = int(text_config.num_attention_heads)
    ulysses = UlyssesSPAttentionHF(
        attn=gathered_attention, batch_size=1, attn_head_count=heads,
        attn_head_size=int(getattr(text_config, "head_dim", None)
                           or text_config.hidden_size // heads),
        kv_head_count=int(getattr(text_config, "num_key_value_heads", None) or heads),
        num_hidden_layers=int(text_config.num_hidden_layers), process_group=group,
        seq_length_is_variable=True)
    return SequenceParallel(group=group, size=size, rank=dist.get_rank(group),
                            ulysses=ulysses), mpu


# ---- the shard of one micro-batch ------------------------------------------------------------
@dataclass(frozen=True)
class ShardPlan:
    """Where this rank's shard of a packed micro-batch lies, computed on the host.

    start, length: the shard is packed tokens ``[start, start + length)`` (tokens past
    ``tokens`` are padding). input_ids [length], position_ids [length] or [D, length]: the
    shard's (padding: a non-video token at position 0). video_rows: (first, end) rows of the
    micro-batch's video features that the shard's video tokens take; video_tokens: all of
    them (the features' row count). scored [N_r]: which of the
    N scored tokens (``logit_index`` order) this rank scores; local_rows [N_r]: their rows in
    the shard. counts: N_r of every rank of the group; order [N]: the scored indices of all
    ranks, rank after rank (``gather_scored`` puts the joined values back with it).
    """

    size: int
    rank: int
    tokens: int
    start: int
    length: int
    input_ids: torch.Tensor
    position_ids: torch.Tensor
    video_rows: tuple[int, int]
    video_tokens: int
    scored: torch.Tensor
    local_rows: torch.Tensor
    counts: tuple[int, ...]
    order: torch.Tensor


def shard_plan(batch, size: int, rank: int, video_token_id: int) -> ShardPlan:
    """The ShardPlan of ``batch`` (a PackedBatch) for ``rank`` of an SP group of ``size``."""
    ids = batch.input_ids.cpu()
    logit_index = batch.logit_index.cpu()
    positions = batch.position_ids.cpu()
    T = int(ids.shape[0])
    length = -(-T // size)
    bounds = [min(s * length, T) for s in range(size + 1)]
    start, stop = rank * length, bounds[rank + 1]
    is_video = (ids == video_token_id).long()
    before = torch.cat([is_video.new_zeros(1), is_video.cumsum(0)])
    pad = length - (stop - start)
    filler = 0 if video_token_id != 0 else 1
    local_ids = torch.cat([ids[start:stop], ids.new_full((pad,), filler)])
    local_pos = torch.cat([positions[..., start:stop],
                           positions.new_zeros((*positions.shape[:-1], pad))], dim=-1)
    owner = torch.div(logit_index, length, rounding_mode="floor")
    per_rank = [torch.nonzero(owner == s).flatten() for s in range(size)]
    scored = per_rank[rank]
    return ShardPlan(size=size, rank=rank, tokens=T, start=start, length=length,
                     input_ids=local_ids, position_ids=local_pos,
                     video_rows=(int(before[min(start, T)]), int(before[stop])),
                     video_tokens=int(before[T]),
                     scored=scored, local_rows=logit_index[scored] - start,
                     counts=tuple(len(x) for x in per_rank), order=torch.cat(per_rank))


def shard_features(features, first: int, end: int, total: int):
    """The rows ``[first, end)`` of a micro-batch's video features (``batch_video_features``
    output, ``total`` rows), in the structure the base forward takes: [1, rows, H] tensors are
    cut along the rows, per-video tuples become a one-entry tuple, per-layer lists (e.g.
    Qwen3-VL's deepstack features, a list of per-video tuples) are cut entry by entry. Fields
    the base forward does not read (the tower's hidden states) are left out, as
    ``merge_features`` does."""
    from types import SimpleNamespace

    from tpo_fast.models.generic import _feature_fields

    return SimpleNamespace(**{name: _cut(getattr(features, name), first, end, total, name)
                              for name in _feature_fields(features)})


def _rows(x) -> int:
    return x.reshape(-1, x.shape[-1]).shape[0]


def _cut(value, first: int, end: int, total: int, name: str):
    if torch.is_tensor(value):
        if value.dim() == 3 and value.shape[0] == 1 and value.shape[1] == total:
            return value[:, first:end]
        if value.dim() == 2 and value.shape[0] == total:
            return value[first:end]
        if value.dim() == 1 and value.shape[0] == total:  # a per-token mask
            return value[first:end]
    elif isinstance(value, (tuple, list)) and value and all(torch.is_tensor(v) for v in value):
        if sum(_rows(v) for v in value) == total:  # one entry per video
            rows = torch.cat([v.reshape(-1, v.shape[-1]) for v in value])[first:end]
            return type(value)([rows])
        if all(_rows(v) == total for v in value):  # one entry per layer
            return type(value)(_cut(v, first, end, total, name) for v in value)
    elif isinstance(value, (tuple, list)) and value and all(
            isinstance(v, (tuple, list)) for v in value):  # per layer, each per video
        return type(value)(_cut(v, first, end, total, name) for v in value)
    raise NotImplementedError(
        f"sequence parallelism cannot split the video feature field {name!r} "
        f"({type(value).__name__}) over the token shards: it is neither one row per video "
        f"token ({total}) nor a list of such")


# ---- the vision tower over the group ------------------------------------------------------------
def encode_split(adapter, videos: list, sp: SequenceParallel):
    """The micro-batch's video features with its frames split over the SP group: each rank runs
    the tower (+ projector) on a contiguous share of ``adapter.frame_units`` in one call, the
    rows are all-gathered (backward: each rank's rows get the gradient of every rank), and the
    adapter assembles the whole micro-batch's features; None where the family cannot split.
    A rank with no unit (fewer units than ranks) runs the first one and keeps no row, so every
    rank calls the tower once (ZeRO-3 gathers its parameters collectively)."""
    units = adapter.frame_units(videos)
    if units is None:
        return None
    share = -(-len(units) // sp.size)
    mine = units[sp.rank * share:(sp.rank + 1) * share]
    rows = adapter.unit_features(mine or units[:1])
    if not mine:
        rows = rows[:0]
    return adapter.assemble_features(_GatherRows.apply(rows, sp.group, sp.size), videos)


class _GatherRows(torch.autograd.Function):
    """[r_s, H] rows on each rank s -> [Σ r_s, H] on every rank, in rank order."""

    @staticmethod
    def forward(ctx, rows, group, size: int):
        # every tensor of a collective on the rows' device: the group is NCCL on GPUs, and a
        # tensor made without a device (on the host) fails there (gloo would accept it)
        counts = [rows.new_zeros(1, dtype=torch.long) for _ in range(size)]
        dist.all_gather(counts, torch.tensor([rows.shape[0]], device=rows.device), group=group)
        counts = torch.cat(counts).tolist()  # one read back for the group's counts
        width = max(counts)
        padded = rows.new_zeros(width, *rows.shape[1:])
        padded[:rows.shape[0]] = rows
        pieces = [torch.empty_like(padded) for _ in range(size)]
        dist.all_gather(pieces, padded.contiguous(), group=group)
        ctx.group, ctx.counts, ctx.rank = group, counts, dist.get_rank(group)
        return torch.cat([p[:n] for p, n in zip(pieces, counts)])

    @staticmethod
    def backward(ctx, grad):
        # each rank's shard uses different rows: a row's gradient is the sum over the ranks
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        start = sum(ctx.counts[:ctx.rank])
        return grad[start:start + ctx.counts[ctx.rank]], None, None


# ---- attention ---------------------------------------------------------------------------------
@dataclass(eq=False)
class ShardedAttention:
    """The packed-attention kwarg of a sequence-parallel forward: the micro-batch's
    PackedAttention (whole sequence), the shard's positions and the SP group's Ulysses."""

    packed: object  # PackedAttention over the micro-batch's T tokens
    sp: SequenceParallel
    positions: torch.Tensor  # [1, L] long: the shard's packed token indices

    def attend_shard(self, module, query, key, value, dropout: float, scaling):
        """q [1, Hq, L, D], k/v [1, Hkv, L, D] of this rank's shard -> ([1, L, Hq·D], None)."""
        return self.sp.ulysses(module, query, key, value, None, dropout=dropout,
                               scaling=scaling, position_ids=self.positions,
                               **{PACKED_KWARG: self.packed})


def gathered_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                       position_ids=None, **kwargs):
    """Ulysses' core attention: q [1, Hq/SP, S·L, D] over the whole (padded) packed sequence
    -> ([1, S·L, Hq/SP, D], None). The prefix-shared attention runs on the T real tokens; the
    padding rows come back as zeros."""
    packed = kwargs[PACKED_KWARG]
    T = packed.num_tokens
    q, k, v = (x[0, :, :T].transpose(0, 1) for x in (query, key, value))
    out = packed.attend(q, k, v, scale=scaling, dropout=dropout)  # [T, H, D]
    pad = query.shape[2] - T
    if pad:
        out = torch.cat([out, out.new_zeros(pad, *out.shape[1:])])
    return out.unsqueeze(0), None


# ---- the loss ------------------------------------------------------------------------------------
class _GatherScored(torch.autograd.Function):
    """[N_r] values of this rank's scored tokens -> the micro-batch's [N] on every rank (the
    counts come from the host plan; every collective tensor is made on ``local``'s device)."""

    @staticmethod
    def forward(ctx, local, plan: ShardPlan, group):
        ctx.scored = plan.scored.to(local.device)
        width = max(plan.counts)
        padded = local.new_zeros(width)
        padded[:local.shape[0]] = local
        pieces = [torch.empty_like(padded) for _ in range(plan.size)]
        dist.all_gather(pieces, padded.contiguous(), group=group)
        joined = torch.cat([p[:n] for p, n in zip(pieces, plan.counts)])
        out = local.new_empty(joined.shape[0])
        out[plan.order.to(local.device)] = joined
        return out

    @staticmethod
    def backward(ctx, grad):
        # every rank computes the same loss from the joined values: the loss is replicated,
        # so this rank's share of the gradient is the gradient of its own tokens
        return grad.index_select(0, ctx.scored), None, None


def gather_scored(local: torch.Tensor, plan: ShardPlan, sp: SequenceParallel) -> torch.Tensor:
    """Join the SP group's per-rank token values (e.g. log-probs) in ``logit_index`` order."""
    return _GatherScored.apply(local, plan, sp.group)


__all__ = ["SequenceParallel", "ShardPlan", "ShardedAttention", "check_heads", "encode_split",
           "gather_scored", "language_config", "gathered_attention", "init_sequence_parallel",
           "shard_features", "shard_plan"]
