"""The TPO objective as one ``nn.Module`` (what DeepSpeed wraps), and the frozen reference.

Fast path: ``PreferenceModel.loss`` — the packed prefix-shared forward + the fused LM-head /
log-prob / DPO+SFT loss (``tpo_fast.kernels.preference_loss``: Triton on CUDA, the chunked torch
reference on CPU), the one batch → loss path the drop-ins use too. Slow path (``run.path=slow``,
the obvious one, for equality checks): each pair as two unpadded rows (prompt + chosen, prompt +
rejected) through the stock Hugging Face forward, full logits, ``log_softmax``, and the same
loss formula on the gathered token log-probs.

Under ZeRO-3 the LM-head weight (and any parameter a model reads outside its submodules'
forwards, e.g. LLaVA-OneVision's ``image_newline``) is registered as an external parameter of
this module, so DeepSpeed gathers it for the forward and its gradient reaches the partition.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

import torch
from torch import nn

from tpo_fast.kernels import LossSpec, dpo_sft_loss
from tpo_fast.packing import PackedBatch


def register_external(owner: nn.Module, policy) -> None:
    """ZeRO-3: parameters used outside their module's forward must be gathered for ``owner``."""
    try:
        from deepspeed.zero import register_external_parameter
    except ImportError:  # no DeepSpeed: nothing is partitioned
        return
    params = [policy.lm_head_weight(), *policy.adapter.base._parameters.values()]
    for p in params:
        if isinstance(p, nn.Parameter):  # a no-op unless ZeRO-3 partitions it
            register_external_parameter(owner, p)


class TPOObjective(nn.Module):
    """``forward(batch, ref_logps, dpo_normalizer, sft_normalizer) -> (loss, metrics)``.

    The loss is this micro-batch's share of the optimizer step's loss: Σ DPO_i / step pairs +
    α · Σ chosen-token NLL / step chosen tokens, so micro-batch losses add up exactly.
    metrics: per-pair ``chosen_rewards``, ``rejected_rewards``, ``margins``,
    ``reward_accuracy`` and ``policy_logps``; scalars ``dpo_loss``, ``nll_loss`` (unweighted
    by α), ``chosen_tokens``.

    ``spec``: the ``tpo_fast.kernels.LossSpec`` (``LossConfig.spec()``).
    ``lora_reference``: the peft model whose adapters, disabled, make the policy its own
    reference (``ref_logps`` is then computed here, in the same engine forward, sharing the
    video features). ``replay``: a ``TowerReplay`` whose recorded tower outputs (from a separate
    reference's pass over the same batch) the policy's video encoding replays.
    """

    def __init__(self, policy, spec: LossSpec, path: str = "fast", *, lora_reference=None,
                 replay=None):
        super().__init__()
        if path not in ("fast", "slow"):
            raise ValueError(f"path must be 'fast' or 'slow', got {path!r}")
        if not isinstance(spec, LossSpec):
            raise TypeError(f"spec must be a tpo_fast.kernels.LossSpec (LossConfig.spec()); "
                            f"got {type(spec).__name__}")
        self.policy = policy
        self.spec = spec
        self.path = path
        self._lora_reference = [lora_reference]  # a list: not a submodule of this module
        self.replay = replay
        register_external(self, policy)

    @contextlib.contextmanager
    def _as_reference(self):
        with torch.no_grad(), self._lora_reference[0].disable_adapter():
            yield

    def forward(self, batch: PackedBatch, ref_logps: torch.Tensor | None,
                dpo_normalizer: float, sft_normalizer: float):
        lora_reference = self._lora_reference[0] is not None
        if self.path == "slow":
            if lora_reference:
                with self._as_reference():
                    token_logps, seq_id = unpacked_token_logps(self.policy, batch)
                    ref_logps = token_logps.new_zeros(2 * batch.n_pairs).index_add(
                        0, seq_id, token_logps).view(-1, 2)
            token_logps, seq_id = unpacked_token_logps(self.policy, batch)
            return dpo_sft_loss(token_logps, seq_id, ref_logps, self.spec,
                                num_pairs=batch.n_pairs, dpo_normalizer=dpo_normalizer,
                                sft_normalizer=sft_normalizer,
                                check_inputs=not token_logps.is_cuda)
        with self.replay.replay() if self.replay is not None else contextlib.nullcontext():
            features = self.policy.encode_videos(batch.videos)
        if lora_reference:  # tower and projector are frozen: the same features serve both
            with self._as_reference():
                ref_logps = self.policy.policy_logps(batch, features)
        # the run's reference (precomputed, live or none) replaces whatever the batch holds
        batch = replace(batch, ref_logps=ref_logps)
        return self.policy.loss(batch, self.spec, features=features,
                                dpo_normalizer=dpo_normalizer, sft_normalizer=sft_normalizer)


def unpacked_token_logps(policy, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """The slow path: fp32 token log-probs of every response token (chosen then rejected, pair
    by pair) from two unpacked rows per pair through the stock forward, and their seq ids."""
    from tpo_fast.models.stock import stock_response_logps

    ids = batch.input_ids.tolist()
    offsets = batch.pair_offsets.tolist()
    out, seq = [], []
    for i, (video, (p, c, r)) in enumerate(zip(batch.videos, _segment_lengths(batch))):
        start = offsets[i]
        prompt = ids[start:start + p]
        responses = (ids[start + p:start + p + c], ids[start + p + c:start + p + c + r])
        for k, response in enumerate(responses):
            out.append(stock_response_logps(policy.model, prompt, response, video))
            seq.append(torch.full((len(response),), 2 * i + k, dtype=torch.long))
    return torch.cat(out), torch.cat(seq).to(out[0].device)


def _segment_lengths(batch: PackedBatch) -> list[tuple[int, int, int]]:
    """(prompt, chosen, rejected) lengths per pair, from the batch's seq ids and offsets."""
    counts = torch.bincount(batch.seq_id.long(), minlength=2 * batch.n_pairs).view(-1, 2)
    sizes = batch.pair_offsets.diff().tolist()
    return [(sizes[i] - int(c) - int(r), int(c), int(r))
            for i, (c, r) in enumerate(counts.tolist())]


class ReferenceScorer(nn.Module):
    """A separate frozen copy of the starting policy: ``forward(batch) -> [n, 2]`` summed
    log-probs; with ``replay``, its vision tower's outputs are recorded for the policy."""

    def __init__(self, policy, replay=None):
        super().__init__()
        self.policy = policy
        self.policy.requires_grad_(False)
        self.replay = replay
        register_external(self, policy)

    @torch.no_grad()
    def forward(self, batch: PackedBatch) -> torch.Tensor:
        with self.replay.record() if self.replay is not None else contextlib.nullcontext():
            features = self.policy.encode_videos(batch.videos)
        return self.policy.policy_logps(batch, features)


__all__ = ["ReferenceScorer", "TPOObjective", "register_external", "unpacked_token_logps"]
