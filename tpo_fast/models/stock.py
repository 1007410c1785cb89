"""The obvious slow path: one row through a model's own (stock) forward, full logits and
``log_softmax``. The oracle every fast path is checked against (DESIGN.md), and what eval's
reference scoring and curation's generation inputs use, so there is one copy of it.
"""

from __future__ import annotations

import inspect

import torch


def stock_inputs(model, input_ids: torch.Tensor, video: dict | None,
                 attention_mask: torch.Tensor | None = None) -> dict:
    """The stock forward's keyword arguments for ``input_ids`` [B, L] and one (or a batch
    merged into one) video's model inputs, as the family's processor would give them: the
    adapter's video fields on the model's device (pixels in its dtype), the token types where
    the base model reads them (M-RoPE families: 2 at video slots, 1 where a video is read as
    images, 0 text) and an attention mask (ones unless given; some families build M-RoPE only
    with one)."""
    from tpo_fast.models.registry import adapter_for

    adapter = adapter_for(model)
    param = next(model.parameters())
    input_ids = input_ids.to(param.device)
    kwargs = {"input_ids": input_ids,
              "attention_mask": (torch.ones_like(input_ids) if attention_mask is None
                                 else attention_mask.to(param.device))}
    if video is None:
        return kwargs
    fields = adapter.stock_inputs(video) if hasattr(adapter, "stock_inputs") else {
        k: v for k, v in video.items() if k != "frame_timestamps"}
    for key, value in fields.items():
        if torch.is_tensor(value):
            value = value.to(param.device)
            kwargs[key] = value.to(param.dtype) if key.startswith("pixel_values") else value
    base = getattr(model, "model", None)
    if base is not None and "mm_token_type_ids" in inspect.signature(base.forward).parameters:
        if hasattr(adapter, "token_types"):
            kwargs["mm_token_type_ids"] = torch.tensor(
                [adapter.token_types(row) for row in input_ids.tolist()], device=param.device)
        else:
            kwargs["mm_token_type_ids"] = (input_ids == adapter.video_token_id).long() * 2
    return kwargs


def stock_response_logps(model, prompt: list[int], response: list[int],
                         video: dict | None) -> torch.Tensor:
    """[len(response)] log-probs of each response token after ``prompt``, from one unpadded row
    ``prompt + response`` through the model's own forward (full logits), in float32 (float64
    for a float64 model: the tests' ground truth)."""
    row = torch.tensor([list(prompt) + list(response)])
    logits = model(**stock_inputs(model, row, video), use_cache=False).logits[0]
    logits = logits.double() if logits.dtype == torch.float64 else logits.float()
    logps = logits[len(prompt) - 1:-1].log_softmax(-1)
    target = torch.tensor(response, device=logps.device)[:, None]
    return logps.gather(1, target)[:, 0]


def stock_pair_logps(model, prompts, chosen, rejected, videos) -> torch.Tensor:
    """[n, 2] summed log-probs of each pair's chosen and rejected response, each as its own
    unpadded row through the stock forward: what every packed path is checked against."""
    return torch.stack([
        torch.stack([stock_response_logps(model, list(p), list(r), video).sum()
                     for r in (c, rj)])
        for p, c, rj, video in zip(prompts, chosen, rejected, videos)])
