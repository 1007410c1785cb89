"""PreferenceModel: a Hugging Face video LLM that scores packed preference pairs.

The drop-in API for any training loop: ``hidden_states(batch)`` gives the hidden states that
predict every response token of a PackedBatch ([N, H], in the model's dtype) and
``policy_logps(batch)`` the summed log-probs of each response ([n, 2]: chosen, rejected).
The fused loss (``tpo_fast.kernels``) takes ``hidden_states`` and ``lm_head_weight()``.

Sequence parallel (``enable_sequence_parallel``, ``tpo_fast.sequence_parallel``): the ranks of
an SP group pass the same batch; ``hidden_states`` then gives this rank's scored tokens only
([N_r, H], ``batch.shard.scored``), while ``token_logps``, ``policy_logps`` and ``forward(batch,
loss=...)`` return the whole micro-batch's values on every rank of the group.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from tpo_fast.attention import BACKENDS, PACKED_KWARG, PackedAttention, packed_forward, register
from tpo_fast.models.base import is_frozen
from tpo_fast.models.registry import adapter_for
from tpo_fast.packing import PackedBatch


class PreferenceModel(nn.Module):
    """Wraps a HF video LLM (``<Family>ForConditionalGeneration``) and its adapter.

    Args:
        model: the Hugging Face model; its language model is switched to the prefix-shared
            attention (which behaves like ``sdpa`` outside packed forwards).
        attention_backend: "auto", "flash_attn", "torch_varlen", "flex" or "sdpa".
        train_vision_tower: train the vision encoder (default: frozen, as in TPO).
        train_projector: train the vision-to-LLM projector (default: yes, as in TPO).
    When nothing visual trains, the video features are computed under ``torch.no_grad``; when
    only the projector trains, the frozen tower records no autograd graph either (its inputs and
    weights need no gradient).
    """

    def __init__(self, model: nn.Module, *, attention_backend: str = "auto",
                 train_vision_tower: bool = False, train_projector: bool = True):
        super().__init__()
        self.model = model
        self.adapter = adapter_for(model)
        if attention_backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {attention_backend!r}; choose from "
                             f"{BACKENDS}")
        self.attention_backend = attention_backend
        self.sequence_parallel = None  # tpo_fast.sequence_parallel.SequenceParallel
        self.adapter.use_attention(register())
        projector = {id(p) for p in self.adapter.projector_parameters()}
        for p in self.adapter.vision_tower().parameters():
            if id(p) not in projector:
                p.requires_grad_(train_vision_tower)
        for p in self.adapter.projector_parameters():
            p.requires_grad_(train_projector)
        # Other encoders the base model holds (Video-LLaVA's image tower, an Omni audio tower)
        # take no part in a video pair: frozen, so the optimizer holds no state for them.
        language = getattr(self.adapter.base, "language_model", None)
        if isinstance(language, nn.Module):
            keep = {id(p) for p in language.parameters()}
            keep |= {id(p) for p in self.adapter.vision_tower().parameters()} | projector
            for p in self.adapter.base.parameters():
                if id(p) not in keep:
                    p.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return self.adapter.lm_head_weight().device

    def lm_head_weight(self) -> torch.Tensor:
        return self.adapter.lm_head_weight()

    # ---- sequence parallelism ----------------------------------------------------------------
    def enable_sequence_parallel(self, sp) -> None:
        """Run packed forwards split over an SP group (``tpo_fast.sequence_parallel``): every
        rank of the group passes the same micro-batch, each runs its token shard."""
        self.sequence_parallel = sp

    def shard(self, batch: PackedBatch) -> PackedBatch:
        """``batch`` with this rank's ShardPlan (host work: call it before ``batch.to``); the
        batch itself without sequence parallelism."""
        sp = self.sequence_parallel
        if sp is None or batch.shard is not None:
            return batch
        from dataclasses import replace

        from tpo_fast.sequence_parallel import shard_plan

        return replace(batch, shard=shard_plan(batch, sp.size, sp.rank,
                                               self.adapter.video_token_id))

    # ---- forward -----------------------------------------------------------------------------
    def encode_videos(self, videos: list):
        """Vision tower + projector over all videos (pair order) in one call per micro-batch."""
        device = self.device
        frozen = is_frozen(self.adapter.vision_tower()) and not any(
            p.requires_grad for p in self.adapter.projector_parameters())
        videos = [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
                   for k, v in video.items()} for video in videos]
        with torch.no_grad() if frozen else contextlib.nullcontext():
            if self.sequence_parallel is not None:  # frames split over the SP group
                from tpo_fast.sequence_parallel import encode_split

                features = encode_split(self.adapter, videos, self.sequence_parallel)
                if features is not None:
                    return features
            return self.adapter.batch_video_features(videos)

    def hidden_states(self, batch: PackedBatch, features=None) -> torch.Tensor:
        """[N, H]: the hidden state that predicts each scored token (``batch.logit_index``).

        ``features``: the batch's ``encode_videos`` output when the caller already has it (e.g.
        a LoRA reference pass and the policy pass over the same frozen tower and projector)."""
        if not batch.videos or len(batch.videos) != batch.n_pairs:
            raise ValueError(f"the batch needs one video per pair ({batch.n_pairs} pairs, "
                             f"{len(batch.videos or [])} videos)")
        device = self.device
        if features is None:
            features = self.encode_videos(batch.videos)
        packed = PackedAttention.from_batch(batch, self.attention_backend, device)
        if self.sequence_parallel is not None:
            return self._shard_hidden_states(self.shard(batch), features, packed)
        with packed_forward():
            hidden = self.adapter.decoder_hidden_states(
                batch.input_ids[None].to(device, non_blocking=True),
                self.adapter.model_position_ids(batch.position_ids).to(device, non_blocking=True),
                features, **{PACKED_KWARG: packed},
            )
        return hidden[0].index_select(0, batch.logit_index.to(device, non_blocking=True))

    def _shard_hidden_states(self, batch: PackedBatch, features, packed) -> torch.Tensor:
        """Sequence parallel: [N_r, H] hidden states of this rank's scored tokens
        (``batch.shard.scored``), from the forward of its token shard."""
        from tpo_fast.sequence_parallel import ShardedAttention, shard_features

        plan, device = batch.shard, self.device
        features = shard_features(features, *plan.video_rows, plan.video_tokens)
        positions = torch.arange(plan.start, plan.start + plan.length, device=device)[None]
        attention = ShardedAttention(packed, self.sequence_parallel, positions)
        with packed_forward():
            hidden = self.adapter.decoder_hidden_states(
                plan.input_ids[None].to(device, non_blocking=True),
                self.adapter.model_position_ids(plan.position_ids).to(device, non_blocking=True),
                features, **{PACKED_KWARG: attention},
            )
        return hidden[0].index_select(0, plan.local_rows.to(device, non_blocking=True))

    def token_logps(self, batch: PackedBatch, features=None) -> torch.Tensor:
        """[N] float32 log-prob of every scored token (``batch.logit_index`` order); under
        sequence parallelism each rank scores its shard's tokens and the group joins them."""
        from tpo_fast.kernels import linear_logprobs

        batch = self.shard(batch)  # once, for hidden_states and here
        hidden = self.hidden_states(batch, features)
        device = hidden.device
        if self.sequence_parallel is None:
            return linear_logprobs(hidden, self.lm_head_weight(), batch.target_ids.to(device))
        from tpo_fast.sequence_parallel import gather_scored

        plan = batch.shard
        targets = batch.target_ids.to(device).index_select(0, plan.scored.to(device))
        weight = self.lm_head_weight()
        if hidden.shape[0]:
            local = linear_logprobs(hidden, weight, targets)
        else:  # a shard of prompt only: still in the graph, so every parameter gets a
            # (zero) gradient on this rank too (ZeRO-3 reduces the same parameters everywhere)
            local = (hidden.sum() + weight.sum()).float().mul(0).expand(0)
        return gather_scored(local, plan, self.sequence_parallel)

    def forward(self, batch: PackedBatch, loss: dict | None = None):
        """``hidden_states(batch)``; with ``loss`` (``tpo_fast.kernels.preference_loss``
        keywords: beta, sft_weight, loss_type, ...) the batch's ``(loss, metrics)`` instead,
        computed inside this forward, so a DDP / FSDP wrapper sees the LM head used in it."""
        if loss is None:
            return self.hidden_states(batch)
        from tpo_fast.kernels import preference_loss

        if self.sequence_parallel is not None:
            from tpo_fast.kernels import dpo_sft_loss

            token_logps = self.token_logps(batch)
            device = token_logps.device
            ref = None if batch.ref_logps is None else batch.ref_logps.to(device)
            return dpo_sft_loss(token_logps, batch.seq_id.to(device), ref,
                                num_pairs=batch.n_pairs, **loss)
        hidden = self.hidden_states(batch)
        device = hidden.device
        ref = None if batch.ref_logps is None else batch.ref_logps.to(device)
        return preference_loss(hidden, self.lm_head_weight(), batch.target_ids.to(device),
                               batch.seq_id.to(device), ref, num_pairs=batch.n_pairs, **loss)

    def policy_logps(self, batch: PackedBatch, features=None) -> torch.Tensor:
        """[n, 2] float32 summed log-probs of the chosen and rejected responses (token log-probs
        from ``tpo_fast.kernels.linear_logprobs``: fused Triton on CUDA, chunked elsewhere)."""
        token_logps = self.token_logps(batch, features)
        device = token_logps.device
        sums = torch.zeros(2 * batch.n_pairs, dtype=torch.float32, device=device)
        return sums.index_add(0, batch.seq_id.to(device), token_logps).view(-1, 2)
