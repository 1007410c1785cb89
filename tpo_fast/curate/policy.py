"""The policy: the video LLM whose own answers become the chosen and rejected responses (and,
by default, the captions).

    policy.answer([PolicyRequest(id, video, plan, question, seed, events), ...]) -> [str | None]

``HFPolicy`` decodes each request's frame plan in background threads (``VideoLoader``; backend,
device, threads and workers from the ``decode:`` section: on a CUDA machine by default DALI on
the model's GPU) and runs batched ``generate``;
``AnnotationPolicy`` answers from the ground-truth events that the plan's
frames show (the synthetic demo and fast tests: a rejected input that misses the segment really
does miss its events). ``None`` marks a request whose video could not be decoded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from tpo_fast.curate.config import PolicyConfig
from tpo_fast.curate.manifest import Span


@dataclass
class PolicyRequest:
    id: str
    video: Path
    plan: object  # tpo_fast.video.FramePlan
    question: str
    seed: int = 0
    events: list[Span] = field(default_factory=list)  # AnnotationPolicy only


class Policy(Protocol):
    name: str

    def answer(self, requests: list[PolicyRequest]) -> list[str | None]: ...


def visible_events(events: list[Span], timestamps) -> list[Span]:
    """The events shown by at least one of the frames (timestamps in seconds)."""
    return [e for e in events if any(e.start <= t < e.end for t in timestamps)]


class AnnotationPolicy:
    """Answers with the ground-truth events its frames show, in time order."""

    name = "annotation"

    def answer(self, requests: list[PolicyRequest]) -> list[str | None]:
        out = []
        for r in requests:
            seen = visible_events(r.events, r.plan.timestamps)
            out.append("In the video, " + ", then ".join(e.text for e in seen) + "."
                       if seen else "Nothing notable happens in the video.")
        return out


class HFPolicy:
    """A Hugging Face video LLM (any family of ``tpo_fast.models``) answering with ``generate``."""

    def __init__(self, model, tokenizer, cfg: PolicyConfig, name: str, decode=None):
        from tpo_fast.config import DecodeConfig
        from tpo_fast.models.registry import adapter_for
        from tpo_fast.video import DecodeSettings

        self.model, self.tokenizer, self.cfg, self.name = model, tokenizer, cfg, name
        self.adapter = adapter_for(model)
        # Resolved in this thread, so decoding workers get an explicit device index.
        self.decode_cfg = decode or DecodeConfig()
        self.decode = DecodeSettings.from_config(self.decode_cfg,
                                                 model_device=next(model.parameters()).device)

    def _inputs(self, request: PolicyRequest) -> tuple[list[int], dict]:
        from tpo_fast.video import load_video_inputs

        video, _ = load_video_inputs(request.video, self.model.config, plan=request.plan,
                                     settings=self.decode)
        ids = self.adapter.prompt_ids(self.tokenizer, request.question, video,
                                      system=self.cfg.system_prompt)
        return ids, video

    def answer(self, requests: list[PolicyRequest]) -> list[str | None]:
        from tpo_fast.curate.generation import generate_batch
        from tpo_fast.video import VideoLoader

        texts: dict[str, str] = {}
        # Equal frame counts next to each other, so LLaVA-style inputs can share a batch.
        order = sorted(requests, key=lambda r: len(r.plan.indices))
        loader = VideoLoader(order, self._inputs, num_workers=self.decode_cfg.workers,
                             prefetch=2 * self.cfg.batch_size)
        batch: list[tuple[PolicyRequest, tuple[list[int], dict]]] = []
        for request, result in loader:
            batch.append((request, result))
            if len(batch) == self.cfg.batch_size:
                texts.update(self._generate(batch, generate_batch))
                batch = []
        if batch:
            texts.update(self._generate(batch, generate_batch))
        return [texts.get(r.id) for r in requests]

    def _generate(self, batch, generate_batch) -> dict[str, str]:
        cfg = self.cfg
        outs = generate_batch(self.model, self.tokenizer, [ids for _, (ids, _) in batch],
                              [video for _, (_, video) in batch],
                              max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample,
                              temperature=cfg.temperature, top_p=cfg.top_p, seed=batch[0][0].seed)
        return {request.id: text for (request, _), text in zip(batch, outs)}


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """``auto``: this process's GPU (env LOCAL_RANK under torchrun), else the CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    return torch.device(device)


def load_video_llm(path: str | None, tiny: str | None, dtype: str, device: str):
    """(model, tokenizer, name) of a local video LLM folder (LongVA included) or a tiny family."""
    torch_dtype = _DTYPES[dtype]
    if tiny:
        from tpo_fast.models.tiny import tiny_model, tiny_tokenizer

        tokenizer = tiny_tokenizer(tiny)
        model = tiny_model(tiny, tokenizer, dtype=torch_dtype)
        name = f"tiny:{tiny}"
    else:
        from tpo_fast.models.folder import load_model, load_tokenizer

        if not Path(path).is_dir():
            raise FileNotFoundError(f"model folder {path} does not exist (models load from "
                                    "local Hugging Face folders)")
        tokenizer = load_tokenizer(path)  # the processor's template where it has none
        model = load_model(path, torch_dtype)
        name = str(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(resolve_device(device)).eval(), tokenizer, name


def build_policy(cfg: PolicyConfig, decode=None) -> Policy:
    """The policy ``cfg`` names; ``decode``: the ``decode:`` section (``DecodeConfig``)."""
    if cfg.kind == "annotation":
        return AnnotationPolicy()
    model, tokenizer, name = load_video_llm(cfg.path, cfg.tiny, cfg.dtype, cfg.device)
    return HFPolicy(model, tokenizer, cfg, name, decode)
