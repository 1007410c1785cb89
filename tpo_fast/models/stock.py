"""The obvious slow path: one row through a model's own (stock) forward, full logits and
``log_softmax``. The oracle every fast path is checked against (DESIGN.md), and what eval's
reference scoring and curation's generation inputs use, so there is one copy of it.
"""

from __future__ import annotations

import torch


def stock_inputs(model, input_ids: torch.Tensor, video: dict | None) -> dict:
    """The stock forward's keyword arguments for ``input_ids`` [1, L] and one video's model
    inputs: video tensors on the model's device (pixels in its dtype); Qwen-VL's token types
    (transformers 5 reads them for M-RoPE: 0 text, 2 video)."""
    param = next(model.parameters())
    kwargs = {"input_ids": input_ids.to(param.device)}
    for key, value in (video or {}).items():
        if key == "frame_timestamps" or not torch.is_tensor(value):
            continue
        value = value.to(param.device)
        kwargs[key] = value.to(param.dtype) if key.startswith("pixel_values") else value
    if video is not None and "video_grid_thw" in video:
        video_token = int(model.config.video_token_id)
        kwargs["mm_token_type_ids"] = (kwargs["input_ids"] == video_token).long() * 2
    return kwargs


def stock_response_logps(model, prompt: list[int], response: list[int],
                         video: dict | None) -> torch.Tensor:
    """[len(response)] float32 log-probs of each response token after ``prompt``, from one
    unpadded row ``prompt + response`` through the model's own forward (full logits)."""
    row = torch.tensor([list(prompt) + list(response)])
    logits = model(**stock_inputs(model, row, video)).logits[0].float()
    logps = logits[len(prompt) - 1:-1].log_softmax(-1)
    target = torch.tensor(response, device=logps.device)[:, None]
    return logps.gather(1, target)[:, 0]
