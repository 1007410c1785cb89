"""The DPO reference: which kind a run uses, and the live ones built without copying the policy.

Kinds (``loss.reference``; ``auto`` picks ``precomputed`` when every pair has ``ref_logps``):

* ``precomputed`` — stored with the pairs by ``tpo-fast ref-logps``; no reference in memory.
* ``model`` — the starting policy, live. With LoRA it is the policy itself with its adapters
  disabled (no second copy at all); otherwise a second model loaded from the same source as the
  policy (under ZeRO-3 under the same ``HfDeepSpeedConfig``, so it is partitioned like the
  policy). A partitioned model is never deep-copied: its parameters would be empty.
* ``none`` — reference-free (SimPO-style log-ratios against 0).

Vision once: the vision tower is frozen and identical in the policy and the reference, so it
runs once per micro-batch. A LoRA reference shares the policy's whole video features (tower and
projector are both outside the adapters and frozen). A separate reference model runs first and
records the outputs of the tower's frozen modules (``TowerReplay``); the policy's pass then
replays them in the same order instead of recomputing them, while a projector that trains runs
in both.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict

import torch
from torch import nn

from tpo_fast.config import ConfigError, TrainConfig


def reference_kind(cfg: TrainConfig, has_ref_logps: bool) -> str:
    """The reference this run uses: precomputed | model | none (``auto`` resolved)."""
    kind = cfg.loss.reference
    if kind == "auto" and cfg.loss.dpo_weight == 0:
        kind = "none"  # plain SFT: the DPO term (and so the reference) is unused
    if kind == "auto":
        kind = "precomputed" if has_ref_logps else "model"
    anchored = cfg.loss.spec().needs_reference
    if kind == "none" and anchored:
        raise ConfigError(f"loss.reference=none but loss_type {anchored[0]!r} needs a reference "
                          "(its loss depends on each response's log-ratio to it): use "
                          "loss.reference=precomputed or model")
    if kind == "precomputed" and not has_ref_logps:
        raise ConfigError("loss.reference=precomputed but some pairs have no ref_logps; run "
                          "`tpo-fast ref-logps` first or set loss.reference=model")
    if kind == "model" and cfg.model.lora.r > 0 and (cfg.model.train_projector
                                                     or cfg.model.train_vision_tower):
        raise ConfigError(
            "a live reference with LoRA is the policy with its adapters disabled, so everything "
            "else must stay frozen: set model.train_projector=false (and "
            "model.train_vision_tower=false), or precompute the reference with `tpo-fast "
            "ref-logps` and use loss.reference=precomputed")
    return kind


def frozen_vision_modules(policy) -> list[str]:
    """Names (relative to the vision tower) of the largest tower submodules that hold no
    trainable and no projector parameter: what a separate reference can compute for the policy.
    Module containers (``ModuleList``/``ModuleDict``) are never called, so their children are
    taken instead. None when any tower parameter outside the projector trains
    (``model.train_vision_tower``, adapters in the tower): a frozen or parameter-less module
    (an MLP's activation) may then sit after a trained one, so its output is the policy's own
    and carries the gradient the trained modules need."""
    tower = policy.adapter.vision_tower()
    projector = {id(p) for p in policy.adapter.projector_parameters()}
    if any(p.requires_grad and id(p) not in projector for p in tower.parameters()):
        return []

    def replayable(module: nn.Module) -> bool:
        return not isinstance(module, (nn.ModuleList, nn.ModuleDict)) and not any(
            p.requires_grad or id(p) in projector for p in module.parameters())

    def in_projector(module: nn.Module) -> bool:  # e.g. Qwen-VL's merger, activations included
        params = list(module.parameters())
        return bool(params) and all(id(p) in projector for p in params)

    names: list[str] = []

    def visit(prefix: str, module: nn.Module) -> None:
        if in_projector(module):
            return
        if replayable(module):
            names.append(prefix)
            return
        for name, child in module.named_children():
            visit(f"{prefix}.{name}" if prefix else name, child)

    visit("", tower)
    return names


class TowerReplay:
    """Records the outputs of a vision tower's frozen modules in one model (the reference) and
    replays them, call by call, in another model of the same architecture (the policy).

    ``record()`` and ``replay()`` are context managers around the two models' passes over the
    same videos; every recorded output must be replayed (else an error), and a replayed call
    must receive inputs of the recorded shapes."""

    def __init__(self, source_tower: nn.Module, target_tower: nn.Module, names: list[str]):
        self.source = {n: source_tower.get_submodule(n) if n else source_tower for n in names}
        self.target = {n: target_tower.get_submodule(n) if n else target_tower for n in names}
        self.outputs: dict[str, list] = defaultdict(list)
        self.calls = 0  # replayed calls so far (tests read it)

    @staticmethod
    def _shapes(args, kwargs) -> tuple:
        values = [*args, *kwargs.values()]
        return tuple(tuple(v.shape) for v in values if torch.is_tensor(v))

    @contextlib.contextmanager
    def record(self):
        self.outputs.clear()
        handles = []
        for name, module in self.source.items():
            def hook(module, args, kwargs, output, name=name):
                self.outputs[name].append((self._shapes(args, kwargs), output))
            handles.append(module.register_forward_hook(hook, with_kwargs=True))
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    @contextlib.contextmanager
    def replay(self):
        originals = {}
        for name, module in self.target.items():
            queue = self.outputs[name]

            def forward(*args, _queue=queue, _name=name, **kwargs):
                if not _queue:
                    raise RuntimeError(f"vision replay: {_name or 'the tower'} was called more "
                                       "often in the policy than in the reference")
                shapes, output = _queue.pop(0)
                if shapes != self._shapes(args, kwargs):
                    raise RuntimeError(f"vision replay: {_name or 'the tower'} got inputs of "
                                       f"shapes {self._shapes(args, kwargs)}; the reference's "
                                       f"call had {shapes}")
                self.calls += 1
                return output

            originals[name] = module.forward
            module.forward = forward
        try:
            yield self
            left = {n: len(q) for n, q in self.outputs.items() if q}
            if left:
                raise RuntimeError(f"vision replay: recorded calls never replayed: {left}")
        finally:
            for name, module in self.target.items():
                module.forward = originals[name]
            self.outputs.clear()


__all__ = ["TowerReplay", "frozen_vision_modules", "reference_kind"]
