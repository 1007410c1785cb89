"""TRL's ``DPOTrainer`` with the packed, prefix-shared forward and the fused loss.

A TRL user changes one line::

    from tpo_fast.integrations.trl import TPODPOTrainer as DPOTrainer

and keeps the ``DPOConfig``, the dataset (TRL's preference format: ``prompt`` / ``chosen`` /
``rejected`` messages and an ``images`` column) and the launch (``accelerate launch``).
What changes per micro-batch (TRL 1.16 runs ``[prompt + chosen]`` and ``[prompt + rejected]``
as two padded rows through the policy and again through the reference):

* the pairs are tokenised exactly as TRL's ``DataCollatorForVisionPreference`` does (TRL's own
  ``prepare_multimodal_messages`` and ``apply_chat_template``, then the processor), but each
  pair's prompt and images are processed once;
* the pairs are packed (``[prompt | chosen | rejected]``, the rejected response attending to the
  prompt's keys): the vision tower and the prompt run once per pair, in the policy and in the
  reference, with no padding;
* only response positions reach the LM head, in the fused log-prob + DPO loss
  (``tpo_fast.kernels.preference_loss``), the loss types and weights mapped from ``DPOConfig``.

It logs TRL's metrics with TRL's semantics: ``loss``, ``rewards/{chosen,rejected,accuracies,
margins}``, ``logps/{chosen,rejected}``, ``logits/{chosen,rejected}`` (vocabulary-mean logit per
response token), ``entropy``, ``mean_token_accuracy``, ``num_tokens`` (TRL's count: each pair's
prompt counted twice, as TRL's two rows hold it). ``DPOConfig`` fields this path does not
implement raise ``UnsupportedConfigError`` naming the field and why (``UNSUPPORTED``).

Images: a pair whose prompt holds images runs the model's own image path
(``adapter.image_adapter()``: ``get_image_features``, the image token, the rope index's image
grid). Tested against TRL 1.16.

Videos (TRL has no video column): rows with a ``videos`` column are read as ``tpo-fast train``
reads them (``VideoPairs``; the trainer's ``video_data`` is its ``DataConfig``) and run the
family's video path; tested equal to ``tpo-fast train`` on the same rows.

``accelerate launch`` with DeepSpeed ZeRO-3: the packed computation runs inside the model's
forward and the LM-head weight is a registered external parameter; on a CPU-only machine
``DPOConfig(accelerator_config=deepspeed_on_cpu())`` (see there why). Tested: 2 gloo ranks
equal 1 process.

The two calls into the library are the seams of issue 28: ``_pack``
(``tpo_fast.data.packer.PairPacker``) and ``_loss`` (``tpo_fast.kernels.preference_loss`` with
the ``LossSpec`` of ``loss_spec(DPOConfig)``; ``PreferenceModel.loss`` computes the same, but
``_loss`` keeps the hidden states for TRL's logit metrics).
"""

from __future__ import annotations

import copy
import functools
import types
from dataclasses import dataclass, field

import torch

try:
    from trl import DPOConfig, DPOTrainer
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("tpo_fast.integrations.trl needs TRL: pip install 'tpo_fast[trl]'") from e

from tpo_fast.kernels import LOSS_TYPES
from tpo_fast.models.preference_model import PreferenceModel
from tpo_fast.train.objective import register_external

TESTED_TRL = "1.16"
# the kernel's label-smoothed types (TRL 1.16's sigmoid ignores label_smoothing; aot uses it)
_SMOOTHED = ("robust", "exo_pair")


class UnsupportedConfigError(ValueError):
    """A ``DPOConfig`` field (or a model/dataset property) the packed path does not implement."""


# field -> (the value that is supported, why another is not)
UNSUPPORTED = {
    "ld_alpha": (None, "LD-DPO weighs the tokens past the shorter response; the fused loss sums "
                 "whole responses"),
    "f_divergence_type": ("reverse_kl", "the fused loss implements the reverse-KL (standard DPO) "
                          "log-ratio only"),
    "use_weighting": (False, "WPO weights need every vocabulary row's probability per token; "
                      "the fused head keeps only the target's"),
    "precompute_ref_log_probs": (False, "not wired into this drop-in yet (TRL itself refuses it "
                                 "with images); use tpo-fast train's ref-logps step"),
    "sync_ref_model": (False, "not tested with the packed reference forward"),
    "truncation_mode": ("keep_start", "keep_end cuts the prompt's image tokens (TRL refuses it "
                        "with images too)"),
    "activation_offloading": (False, "not tested with the packed forward"),
    "use_liger_kernel": (False, "Liger's fused head replaces the one this trainer fuses"),
}


def check_config(args: DPOConfig) -> None:
    """Raise ``UnsupportedConfigError`` for every field of ``UNSUPPORTED`` set otherwise."""
    for name, (supported, why) in UNSUPPORTED.items():
        value = getattr(args, name, supported)
        if value != supported:
            raise UnsupportedConfigError(f"DPOConfig.{name}={value!r} is not supported by "
                                         f"TPODPOTrainer (supported: {supported!r}): {why}")
    loss_spec(args)  # the loss types, validated


def loss_spec(args: DPOConfig):
    """``DPOConfig`` -> the fused loss's ``tpo_fast.kernels.LossSpec`` (``loss_options``)."""
    from tpo_fast.kernels import LossSpec

    return LossSpec(**loss_options(args))


def loss_options(args: DPOConfig) -> dict:
    """``DPOConfig`` -> the fused loss's options (``LossSpec`` keywords).

    TRL 1.16's loss is Σ_k w_k · mean_i loss_k,i over ``loss_type`` / ``loss_weights``; its
    ``"sft"`` entry is the token-mean NLL of the chosen responses (over the micro-batch's chosen
    tokens), which is the kernel's ``sft_weight`` term (RPO: TRL ≤ 0.x's ``rpo_alpha`` is
    ``loss_type=["sigmoid", "sft"], loss_weights=[1, alpha]`` in 1.16). ``label_smoothing`` reaches
    the types that use it in TRL 1.16 (robust, exo_pair)."""
    types_ = list(args.loss_type)
    weights = list(args.loss_weights or [1.0] * len(types_))
    keep, keep_w, sft = [], [], 0.0
    for t, w in zip(types_, weights):
        if t == "sft":
            sft += float(w)
        elif t in LOSS_TYPES:
            keep.append(t)
            keep_w.append(float(w))
        else:
            raise UnsupportedConfigError(
                f"DPOConfig.loss_type {t!r} is not supported by TPODPOTrainer: the fused loss "
                f"implements {sorted(LOSS_TYPES) + ['sft']} (aot / aot_unpaired sort the "
                "micro-batch's pairs; sigmoid_norm is not implemented)")
    smoothing = float(args.label_smoothing) if any(t in _SMOOTHED for t in keep) else 0.0
    if smoothing and "sigmoid" in keep:
        raise UnsupportedConfigError(
            "DPOConfig.label_smoothing with loss_type 'sigmoid' beside 'robust'/'exo_pair': TRL "
            "1.16's sigmoid ignores label_smoothing, the fused loss's sigmoid would apply it "
            "(cDPO)")
    out = dict(beta=float(args.beta), sft_weight=sft, label_smoothing=smoothing)
    if "discopop" in keep:  # TRL ignores discopop_tau otherwise; LossSpec refuses an unused one
        out["discopop_tau"] = float(args.discopop_tau)
    if keep:
        return dict(out, loss_type=keep, loss_weights=keep_w)
    return dict(out, loss_type="sigmoid", dpo_weight=0.0)  # SFT only (DPO metrics still kept)


# ---- data ------------------------------------------------------------------------------------
@dataclass
class PairBatch:
    """One micro-batch of tokenised pairs (host side; the Trainer moves no part of it)."""

    prompt_ids: list = field(default_factory=list)
    chosen_ids: list = field(default_factory=list)
    rejected_ids: list = field(default_factory=list)
    visuals: list = field(default_factory=list)  # per pair: the image or video inputs
    kind: str = "image"  # "image" (the processor's image inputs) or "video" (ours)

    @property
    def num_tokens(self) -> int:
        """TRL's ``attention_mask.sum()``: each pair's prompt in both of its rows."""
        return sum(2 * len(p) + len(c) + len(r) for p, c, r in
                   zip(self.prompt_ids, self.chosen_ids, self.rejected_ids))


_TEXT_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


class VideoPairs:
    """TRL-format rows with a video -> (prompt ids, chosen ids, rejected ids, video inputs), read
    as ``tpo-fast train`` reads the same rows (TRL defines no video column; ours:
    ``tpo_fast/data/formats.py``): ``trl_pair`` and ``parse_pair`` (the ``videos`` column or a
    video content part; a relative path resolves under ``data.video_root``, else the working
    directory), the video decoded and preprocessed by the family's video path
    (``load_video_inputs``: ``data.frames`` / the row's ``frames``, ``min_pixels``,
    ``max_pixels``; the ``decode:`` section's backend, device and threads), and tokenised by
    the family's ``PairPacker`` (its chat template, the video tokens expanded, each response
    ending with the end-of-turn token).

    Args:
        adapter: the family's adapter (``PreferenceModel.adapter``).
        tokenizer: the model's tokenizer (a processor's ``tokenizer`` is taken).
        data: a ``tpo_fast.config.DataConfig``, the ``data`` section ``tpo-fast train`` reads.
        decode: a ``tpo_fast.config.DecodeConfig``, its ``decode`` section.
    """

    def __init__(self, adapter, tokenizer, data=None, decode=None):
        from pathlib import Path

        from tpo_fast.config import DataConfig, DecodeConfig
        from tpo_fast.data.packer import PairPacker
        from tpo_fast.video import DecodeSettings

        self.cfg = data if data is not None else DataConfig()
        self.packer = PairPacker(adapter, getattr(tokenizer, "tokenizer", tokenizer))
        self.model_config = adapter.model.config
        self.root = Path(self.cfg.video_root or ".")
        self.decode = DecodeSettings.from_config(decode if decode is not None else DecodeConfig(),
                                                 model_device="cpu")

    def __call__(self, example: dict, where: str):
        from tpo_fast.data.dataset import record_video_inputs
        from tpo_fast.data.formats import trl_pair
        from tpo_fast.data.pairs import parse_pair
        from tpo_fast.video import VideoDecodeError

        try:
            record = parse_pair(trl_pair(example), where, self.root, self.cfg.frame_fps)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from e
        try:
            video = record_video_inputs(record, self.cfg, self.model_config, self.decode)
            prompt = self.packer.prompt_ids(record.prompt, video,
                                            system=record.system or self.cfg.system_prompt)
            return (prompt, self.packer.response_ids(record.chosen),
                    self.packer.response_ids(record.rejected), video)
        except (ValueError, OSError, VideoDecodeError) as e:
            raise ValueError(f"{where}: {e}") from e


def _is_video_row(example: dict) -> bool:
    return bool(example.get("videos")) or example.get("video") is not None


class PairCollator:
    """TRL-format examples -> ``{"pairs": PairBatch}``. Image rows are tokenised as TRL 1.16's
    ``DataCollatorForVisionPreference`` does (same message preparation, chat template, processor
    calls and ``keep_start`` truncation of each ``prompt + response`` row at ``max_length``), one
    processor call per prompt instead of one per row. Rows with a video (``videos`` column, or
    ``video``) go through ``video`` (a ``VideoPairs``: as ``tpo-fast train`` reads them), with
    the same ``keep_start`` truncation of the responses. A micro-batch holds one kind."""

    def __init__(self, processor, max_length: int | None = None, video: VideoPairs | None = None):
        self.processor, self.max_length, self.video = processor, max_length, video

    def _truncate(self, i: int, ids: list, response: list, key: str) -> list:
        if self.max_length is not None:
            if len(ids) >= self.max_length:
                raise ValueError(
                    f"example {i}: its prompt has {len(ids)} tokens, max_length is "
                    f"{self.max_length}: truncation would cut the {key} response "
                    "entirely (and visual tokens with it)")
            response = response[:self.max_length - len(ids)]
        if not response:
            raise ValueError(f"example {i}: empty {key} response")
        return response

    def _videos(self, examples: list[dict]) -> dict:
        if self.video is None:
            raise UnsupportedConfigError("video rows need the trainer's video reader (the "
                                         "PairCollator was built without one)")
        out = PairBatch(kind="video")
        for i, example in enumerate(examples):
            if not _is_video_row(example):
                raise UnsupportedConfigError(f"example {i} has no video in a micro-batch of "
                                             "video rows (one kind per micro-batch)")
            prompt, chosen, rejected, video = self.video(example, f"example {i}")
            out.prompt_ids.append(prompt)
            out.chosen_ids.append(self._truncate(i, prompt, chosen, "chosen"))
            out.rejected_ids.append(self._truncate(i, prompt, rejected, "rejected"))
            out.visuals.append(video)
        return {"pairs": out}

    def __call__(self, examples: list[dict]) -> dict:
        from trl.data_utils import (
            apply_chat_template,
            is_conversational,
            prepare_multimodal_messages,
        )

        if examples and _is_video_row(examples[0]):
            return self._videos(examples)
        out = PairBatch()
        for i, example in enumerate(examples):
            example = dict(example)
            if "image" in example:
                example["images"] = [example.pop("image")]
            if _is_video_row(example):
                raise UnsupportedConfigError(f"example {i} has a video in a micro-batch of "
                                             "image rows (one kind per micro-batch)")
            images = example.get("images") or []
            if not images:
                raise UnsupportedConfigError(f"example {i} has no images: the packed forward "
                                             "runs pairs whose prompt holds images")
            if is_conversational(example):
                example["prompt"] = prepare_multimodal_messages(example["prompt"], images=images)
                example["chosen"] = prepare_multimodal_messages(example["chosen"])
                example["rejected"] = prepare_multimodal_messages(example["rejected"])
                example = apply_chat_template(example, self.processor)
            prompt = self.processor(images=[images], text=[example["prompt"]],
                                    return_tensors="pt", add_special_tokens=False)
            ids = prompt["input_ids"][0].tolist()
            responses = []
            for key in ("chosen", "rejected"):
                r = self.processor(text=[example[key]], add_special_tokens=False)["input_ids"][0]
                responses.append(self._truncate(i, ids, list(r), key))
            out.prompt_ids.append(ids)
            out.chosen_ids.append(responses[0])
            out.rejected_ids.append(responses[1])
            out.visuals.append({k: v for k, v in prompt.items() if k not in _TEXT_KEYS})
        return {"pairs": out}


# ---- the two seams (issue 28) ----------------------------------------------------------------
def _pack(policy: PreferenceModel, pairs: PairBatch):
    """The packing seam: pairs -> PackedBatch, through the family's ``PairPacker`` (the pairs are
    tokenised already: the prompts hold their visual tokens)."""
    from tpo_fast.data.packer import PairPacker

    return PairPacker(policy.adapter).pack(pairs.prompt_ids, pairs.chosen_ids,
                                           pairs.rejected_ids, pairs.visuals)


def _loss(policy: PreferenceModel, batch, spec, ref_logps: torch.Tensor | None):
    """The loss seam: (loss, metrics, hidden [N, H]) of a packed micro-batch (issue 28:
    ``policy.loss(batch, LossSpec(...), ref_logps=...)``; the hidden states feed TRL's
    logit metrics, ``_token_stats``)."""
    from tpo_fast.kernels import preference_loss

    hidden = policy.hidden_states(batch)
    device = hidden.device
    ref = None if ref_logps is None else ref_logps.to(device)
    loss, metrics = preference_loss(hidden, policy.lm_head_weight(), batch.target_ids.to(device),
                                    batch.seq_id.to(device), ref, spec, num_pairs=batch.n_pairs)
    return loss, metrics, hidden


@torch.no_grad()
def _token_stats(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                 seq_id: torch.Tensor, chunk: int = 1024) -> dict:
    """TRL's per-token extras of the response tokens, summed per side: entropy, the
    vocabulary-mean logit, whether the target is the top-1 logit (chunks of ``chunk`` tokens,
    [chunk, V] at a time)."""
    sums = {k: hidden.new_zeros(2, dtype=torch.float32) for k in ("entropy", "mean_logit",
                                                                   "top1", "tokens")}
    side = (seq_id % 2).long()
    for start in range(0, hidden.shape[0], chunk):
        h = hidden[start:start + chunk]
        logits = (h @ weight.t()).float()
        logp = logits.log_softmax(-1)
        s = side[start:start + chunk]
        values = {"entropy": -(logp.exp() * logp).sum(-1), "mean_logit": logits.mean(-1),
                  "top1": (logits.argmax(-1) == targets[start:start + chunk]).float(),
                  "tokens": torch.ones_like(s, dtype=torch.float32)}
        for k, v in values.items():
            sums[k].index_add_(0, s, v)
    return sums


def _packed_forward(model: torch.nn.Module, run) -> None:
    """Let ``model(tpo_packed=x)`` return ``run(x)``, so the packed computation runs inside the
    (wrapped) model's forward, as DeepSpeed and DDP expect; other calls are unchanged."""
    original = model.forward

    @functools.wraps(original)
    def forward(self, *args, tpo_packed=None, **kwargs):
        if tpo_packed is None:
            return original(*args, **kwargs)
        return run(tpo_packed)

    model.forward = types.MethodType(forward, model)


def _preference_model(model: torch.nn.Module) -> PreferenceModel:
    """A PreferenceModel over ``model`` that leaves every ``requires_grad`` as the user set it
    (PreferenceModel's TPO default freezes the vision tower; TRL trains what is trainable)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    policy = PreferenceModel(model)
    for p, flag in flags:
        p.requires_grad_(flag)
    return policy


def _image_model(policy: PreferenceModel) -> PreferenceModel:
    """The same model behind its image adapter (pairs whose prompts hold images)."""
    images = copy.copy(policy)
    images.adapter = policy.adapter.image_adapter()
    return images


def deepspeed_on_cpu() -> dict | None:
    """Under ``accelerate launch`` with DeepSpeed on a machine without an accelerator: make the
    process state on gloo and return the ``DPOConfig.accelerator_config`` that makes the Trainer
    use it (``{"use_configured_state": True}``); elsewhere None (nothing done). Call it before
    ``DPOConfig(...)`` and leave ``use_cpu`` False (``cpu=True`` turns DeepSpeed off).

    Why: accelerate 1.16's ``PartialState._prepare_backend`` takes the backend from the
    accelerator (``get_torch_accelerator_backend()``), which is ``(None, None)`` on a CPU-only
    torch, and transformers' ``TrainingArguments._setup_devices`` passes ``ddp_backend`` only
    when DeepSpeed is off; with no backend the state says "no distributed training" (one
    process) and DeepSpeed's batch check fails on the second rank (``train_batch_size`` 1 !=
    1 * 1 * 2). A ``PartialState(backend="gloo")`` initialises DeepSpeed's communication on gloo
    (``deepspeed.comm.init_distributed``) and counts the ranks."""
    import os

    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return None
    if torch.cuda.is_available():
        return None
    from accelerate import PartialState

    PartialState(backend="gloo")
    return {"use_configured_state": True}


class TPODPOTrainer(DPOTrainer):
    """``trl.DPOTrainer`` (1.16) with the packed prefix-shared forward and the fused loss.

    Same constructor and ``DPOConfig``; see the module docstring for what changes and
    ``UNSUPPORTED`` for the fields it refuses."""

    def __init__(self, model, ref_model=None, args: DPOConfig | None = None, data_collator=None,
                 train_dataset=None, eval_dataset=None, processing_class=None, *,
                 video_data=None, video_decode=None, **kwargs):
        # TRL 1.16 knows no video column: a dataset of video rows is kept untokenised here (as
        # TRL keeps its image datasets) and read by VideoPairs; ``video_data`` is the
        # ``tpo_fast.config.DataConfig`` it reads them with (frames, pixels, video_root, ...),
        # ``video_decode`` the ``DecodeConfig`` it decodes them with (backend, threads)
        sample = next(iter(train_dataset)) if train_dataset is not None else {}
        self._tpo_video = _is_video_row(sample)
        self._tpo_video_data = video_data
        if args is not None:
            check_config(args)
        if kwargs.get("peft_config") is not None:
            raise UnsupportedConfigError("peft_config: the reference forward through the "
                                         "disabled adapter is not wired into TPODPOTrainer yet")
        super().__init__(model, ref_model=ref_model, args=args, data_collator=data_collator,
                         train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processing_class, **kwargs)
        check_config(self.args)
        if self.aux_loss_enabled:
            raise UnsupportedConfigError("router_aux_loss_coef: the MoE router loss is not "
                                         "returned by the packed forward")
        if self._tpo_video:
            self._is_vision_dataset = True  # TRL's untokenised (on the fly) dataset paths
            self._signature_columns = None
        if not self._is_vision_dataset:
            raise UnsupportedConfigError("TPODPOTrainer takes image datasets ('images' column) "
                                         "and video datasets ('videos'); a text-only dataset "
                                         "gains nothing from it")
        unwrapped = self.model
        policy = _preference_model(unwrapped)
        self._tpo_policy = {"video": policy, "image": _image_model(policy)}
        if data_collator is None:
            self.data_collator = PairCollator(
                self.processing_class, self.args.max_length,
                video=VideoPairs(policy.adapter, self.processing_class, video_data,
                                 video_decode))
        self._tpo_options = loss_spec(self.args)
        _packed_forward(unwrapped, self._policy_run)
        register_external(unwrapped, policy)
        self._tpo_reference = None
        if self.ref_model is not None:
            ref = getattr(self.ref_model, "module", self.ref_model)  # a DeepSpeed engine's model
            reference = _preference_model(ref)
            self._tpo_reference = {"video": reference, "image": _image_model(reference)}
            _packed_forward(ref, self._reference_run)
            register_external(ref, reference)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if getattr(self, "_tpo_video", False):
            return dataset  # read on the fly by VideoPairs, as TRL's image datasets are
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if getattr(self, "_tpo_video", False):
            # TRL's vision columns, the video columns, and the row fields VideoPairs reads
            extra = ["videos", "video", "frames", "fps", "system"]
            self._signature_columns = list(self._signature_columns) + [
                c for c in extra if c not in self._signature_columns]

    def _policy_run(self, packed):
        batch, ref_logps, kind = packed
        policy = self._tpo_policy[kind]
        loss, metrics, hidden = _loss(policy, batch, self._tpo_options, ref_logps)
        device = hidden.device
        stats = _token_stats(hidden.detach(), policy.lm_head_weight().detach(),
                             batch.target_ids.to(device), batch.seq_id.to(device))
        return loss, metrics, stats

    def _reference_run(self, packed):
        batch, kind = packed
        return self._tpo_reference[kind].policy_logps(batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:
            raise NotImplementedError("TPODPOTrainer builds no logits (compute_metrics / "
                                      "prediction logits): use prediction_loss_only")
        pairs: PairBatch = inputs["pairs"]
        batch = _pack(self._tpo_policy[pairs.kind], pairs)
        with torch.no_grad(), self.accelerator.autocast():  # as TRL's reference forward
            ref_logps = self.ref_model(tpo_packed=(batch, pairs.kind))
        loss, metrics, stats = model(tpo_packed=(batch, ref_logps, pairs.kind))
        self._log_pairs(pairs, metrics, stats, ref_logps.to(loss.device))
        return loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation: the loss and TRL's metrics (logged as ``eval_*``); no logits (the fused
        head builds none), so ``compute_metrics`` gets nothing to read."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def _log_pairs(self, pairs: PairBatch, metrics: dict, stats: dict, ref: torch.Tensor):
        """TRL 1.16's ``_compute_loss`` metrics, from the packed results."""
        mode = "train" if self.model.training else "eval"
        acc, m = self.accelerator, self._metrics[mode]
        gather_sum = lambda t: acc.gather_for_metrics(t).sum(0)  # noqa: E731
        totals = {k: gather_sum(v[None]) for k, v in stats.items()}
        tokens = totals["tokens"]
        entropy = totals["entropy"].sum() / tokens.sum()
        m["entropy"].append(entropy.item() if tokens.sum() > 0 else 0.0)
        if mode == "train":
            count = torch.tensor(pairs.num_tokens, device=acc.device)
            self._total_train_tokens += gather_sum(count[None]).item() // self._tp_size
        m["num_tokens"] = [self._total_train_tokens]
        for i, name in enumerate(("chosen", "rejected")):
            n = tokens[i].item()
            m[f"logits/{name}"].append(totals["mean_logit"][i].item() / n if n > 0 else 0.0)
        m["mean_token_accuracy"].append(
            totals["top1"][0].item() / tokens[0].item() if tokens[0] > 0 else 0.0)
        policy = metrics["policy_logps"]
        chosen_rewards = self.beta * (policy[:, 0] - ref[:, 0])
        rejected_rewards = self.beta * (policy[:, 1] - ref[:, 1])
        m["rewards/chosen"].append(acc.gather(chosen_rewards).mean().item())
        m["rewards/rejected"].append(acc.gather(rejected_rewards).mean().item())
        m["rewards/accuracies"].append(
            acc.gather((chosen_rewards > rejected_rewards).float()).mean().item())
        m["rewards/margins"].append(acc.gather(chosen_rewards - rejected_rewards).mean().item())
        m["logps/chosen"].append(acc.gather(policy[:, 0]).mean().item())
        m["logps/rejected"].append(acc.gather(policy[:, 1]).mean().item())


__all__ = ["PairBatch", "PairCollator", "TPODPOTrainer", "UNSUPPORTED", "UnsupportedConfigError",
           "VideoPairs", "check_config", "deepspeed_on_cpu", "loss_options", "loss_spec"]
