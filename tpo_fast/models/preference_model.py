"""PreferenceModel: a Hugging Face video LLM that scores packed preference pairs.

The drop-in API for any training loop: ``loss(batch, spec)`` gives a PackedBatch's
``(loss, metrics)`` under a ``tpo_fast.kernels.LossSpec`` — the one batch → loss path, used by
``tpo-fast train``, ``forward(batch, loss=spec)`` and the Hugging Face / TRL drop-ins.
``hidden_states(batch)`` gives the hidden states that predict every response token ([N, H], in
the model's dtype) and ``policy_logps(batch)`` the summed log-probs of each response ([n, 2]:
chosen, rejected).

Sequence parallel (``enable_sequence_parallel``, ``tpo_fast.sequence_parallel``): the ranks of
an SP group pass the same batch; ``hidden_states`` then gives this rank's scored tokens only
([N_r, H], ``batch.shard.scored``), while ``token_logps``, ``policy_logps``, ``loss`` and
``forward(batch, loss=...)`` return the whole micro-batch's values on every rank of the group.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from tpo_fast.attention import BACKENDS, PACKED_KWARG, PackedAttention, packed_forward, register
from tpo_fast.models.base import is_frozen
from tpo_fast.models.registry import adapter_for
from tpo_fast.packing import PackedBatch
from tpo_fast.tensor_tree import move_tensors


def _on(x: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """``x`` on ``device`` (an asynchronous copy from pinned memory); None stays None."""
    return None if x is None else x.to(device, non_blocking=True)


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
        videos = move_tensors(videos, device, non_blocking=True)
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
        return self._decode(batch.input_ids, batch.position_ids, features, packed,
                            batch.logit_index)

    def _shard_hidden_states(self, batch: PackedBatch, features, packed) -> torch.Tensor:
        """Sequence parallel: [N_r, H] hidden states of this rank's scored tokens
        (``batch.shard.scored``), from the forward of its token shard."""
        from tpo_fast.sequence_parallel import ShardedAttention, shard_features

        plan, device = batch.shard, self.device
        features = shard_features(features, *plan.video_rows, plan.video_tokens)
        positions = torch.arange(plan.start, plan.start + plan.length, device=device)[None]
        attention = ShardedAttention(packed, self.sequence_parallel, positions)
        return self._decode(plan.input_ids, plan.position_ids, features, attention,
                            plan.local_rows)

    def _decode(self, input_ids, position_ids, features, attention, rows) -> torch.Tensor:
        """[len(rows), H]: the packed decoder forward over input_ids [T] (position ids [T] or
        [3, T]) with ``attention`` as the packed attention, at the token rows ``rows``."""
        device = self.device
        with packed_forward():
            hidden = self.adapter.decoder_hidden_states(
                _on(input_ids[None], device),
                _on(self.adapter.model_position_ids(position_ids), device),
                features, **{PACKED_KWARG: attention},
            )
        return hidden[0].index_select(0, _on(rows, device))

    def token_logps(self, batch: PackedBatch, features=None) -> torch.Tensor:
        """[N] float32 log-prob of every scored token (``batch.logit_index`` order); under
        sequence parallelism each rank scores its shard's tokens and the group joins them."""
        from tpo_fast.kernels import linear_logprobs

        batch = self.shard(batch)  # once, for hidden_states and here
        hidden = self.hidden_states(batch, features)
        device = hidden.device
        if self.sequence_parallel is None:
            return linear_logprobs(hidden, self.lm_head_weight(), _on(batch.target_ids, device))
        from tpo_fast.sequence_parallel import gather_scored

        plan = batch.shard
        targets = _on(batch.target_ids, device).index_select(0, _on(plan.scored, device))
        weight = self.lm_head_weight()
        if hidden.shape[0]:
            local = linear_logprobs(hidden, weight, targets)
        else:  # a shard of prompt only: still in the graph, so every parameter gets a
            # (zero) gradient on this rank too (ZeRO-3 reduces the same parameters everywhere)
            local = (hidden.sum() + weight.sum()).float().mul(0).expand(0)
        return gather_scored(local, plan, self.sequence_parallel)

    def loss(self, batch: PackedBatch, spec, *, ref_logps: torch.Tensor | None = None,
             features=None, dpo_normalizer: float | torch.Tensor | None = None,
             sft_normalizer: float | torch.Tensor | None = None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The batch's ``(loss, metrics)`` under ``spec`` (a ``tpo_fast.kernels.LossSpec``):
        the packed forward and the fused LM head + log-prob + preference loss
        (``tpo_fast.kernels.preference_loss``; under sequence parallelism the group's joined
        token log-probs and ``dpo_sft_loss``, the same value on every rank of the group).

        ref_logps: [n, 2] fp32 summed reference log-probs (chosen, rejected); None: the batch's
        own ``batch.ref_logps`` (None there too: reference-free). features: the batch's
        ``encode_videos`` output when the caller already has it. dpo_normalizer /
        sft_normalizer: the step's pair and chosen-token totals under gradient accumulation
        (defaults: this micro-batch's). Batches come from the packer, validated on the host:
        on CUDA the value checks (host syncs) are skipped. Returns (0-dim fp32 loss, metrics
        of ``tpo_fast.kernels.dpo_sft_loss``)."""
        from tpo_fast.kernels import dpo_sft_loss, preference_loss

        ref = batch.ref_logps if ref_logps is None else ref_logps
        norms = dict(num_pairs=batch.n_pairs, dpo_normalizer=dpo_normalizer,
                     sft_normalizer=sft_normalizer)
        if self.sequence_parallel is not None:  # token log-probs joined over the group
            token_logps = self.token_logps(batch, features)
            device = token_logps.device
            return dpo_sft_loss(token_logps, _on(batch.seq_id, device), _on(ref, device), spec,
                                check_inputs=not token_logps.is_cuda, **norms)
        hidden = self.hidden_states(batch, features)
        device = hidden.device
        return preference_loss(hidden, self.lm_head_weight(), _on(batch.target_ids, device),
                               _on(batch.seq_id, device), _on(ref, device), spec,
                               check_inputs=not hidden.is_cuda, **norms)

    def forward(self, batch: PackedBatch, loss=None):
        """``hidden_states(batch)``; with ``loss`` (a ``tpo_fast.kernels.LossSpec``)
        ``self.loss(batch, loss)`` instead, computed inside this forward, so a DDP / FSDP
        wrapper sees the LM head used in it."""
        if loss is None:
            return self.hidden_states(batch)
        return self.loss(batch, loss)

    def policy_logps(self, batch: PackedBatch, features=None) -> torch.Tensor:
        """[n, 2] float32 summed log-probs of the chosen and rejected responses (token log-probs
        from ``tpo_fast.kernels.linear_logprobs``: fused Triton on CUDA, chunked elsewhere)."""
        token_logps = self.token_logps(batch, features)
        device = token_logps.device
        sums = torch.zeros(2 * batch.n_pairs, dtype=torch.float32, device=device)
        return sums.index_add(0, _on(batch.seq_id, device), token_logps).view(-1, 2)
