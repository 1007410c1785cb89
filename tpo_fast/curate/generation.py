"""Batched generation for Hugging Face video LLMs (and a cached greedy/sampling loop for models
without ``generate``, e.g. LongVA). Prompts are token ids with the video tokens already expanded
(``adapter.prompt_ids``); they are left-padded into one batch."""

from __future__ import annotations

import torch

from tpo_fast.models.stock import stock_inputs

_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>")


def stop_ids(tokenizer) -> list[int]:
    """The EOS token and any end-of-turn tokens the vocabulary holds."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for token in _END_TOKENS:
        tid = tokenizer.convert_tokens_to_ids(token)
        if tid is not None and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return sorted(ids)


def merge_videos(videos: list[dict]) -> dict | None:
    """One batch's video inputs concatenated on dim 0, or None if they cannot be merged
    (different frame counts for LLaVA-style inputs, or non-tensor entries)."""
    keys = set(videos[0])
    if any(set(v) != keys for v in videos):
        return None
    merged = {}
    for key in keys:
        values = [v[key] for v in videos]
        if not all(isinstance(x, torch.Tensor) for x in values):
            return None
        if len({tuple(x.shape[1:]) for x in values}) != 1:
            return None
        merged[key] = torch.cat(values)
    return merged


def _decode(tokenizer, ids: list[int], stops: list[int]) -> str:
    for i, t in enumerate(ids):
        if t in stops:
            ids = ids[:i]
            break
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


@torch.no_grad()
def generate_batch(model, tokenizer, prompts: list[list[int]], videos: list[dict | None], *,
                   max_new_tokens: int, do_sample: bool, temperature: float, top_p: float,
                   seed: int) -> list[str]:
    """Answers for prompts (token ids) with their videos (model inputs or None for text only).

    Items whose videos cannot share a batch are generated one at a time. Sampling is seeded by
    ``seed`` (per batch)."""
    if not prompts:
        return []
    # only tensors are model inputs (e.g. Qwen3-VL's frame_timestamps are already in the prompt)
    videos = [None if v is None else {k: x for k, x in v.items() if torch.is_tensor(x)}
              for v in videos]
    with_video = [v is not None for v in videos]
    merged = merge_videos([v for v in videos if v is not None]) if any(with_video) else {}
    if merged is None and len(prompts) == 1:
        raise ValueError("a video input could not be batched with itself")
    if (any(with_video) and not all(with_video)) or merged is None:
        return [generate_batch(model, tokenizer, [p], [v], max_new_tokens=max_new_tokens,
                               do_sample=do_sample, temperature=temperature, top_p=top_p,
                               seed=seed)[0] for p, v in zip(prompts, videos)]
    torch.manual_seed(seed)
    sampling = dict(do_sample=do_sample, temperature=temperature, top_p=top_p)
    if not hasattr(model, "generate"):
        return [_loop_generate(model, tokenizer, p, v, max_new_tokens, **sampling)
                for p, v in zip(prompts, videos)]
    stops = stop_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    width = max(map(len, prompts))
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    kwargs = stock_inputs(model, input_ids, merged, attention_mask=mask)
    if not do_sample:
        sampling = {"do_sample": False, "temperature": None, "top_p": None}
    out = model.generate(max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=stops,
                         **sampling, **kwargs)
    return [_decode(tokenizer, row[width:].tolist(), stops) for row in out]


def _next_token(logits: torch.Tensor, do_sample: bool, temperature: float,
                top_p: float) -> int:
    if not do_sample:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / max(temperature, 1e-5), dim=-1)
    sorted_p, order = probs.sort(descending=True)
    keep = sorted_p.cumsum(0) - sorted_p < top_p
    sorted_p = sorted_p * keep
    return int(order[torch.multinomial(sorted_p / sorted_p.sum(), 1)])


def _loop_generate(model, tokenizer, prompt: list[int], video: dict | None, max_new_tokens: int,
                   *, do_sample: bool, temperature: float, top_p: float) -> str:
    """Greedy or sampled decoding with a KV cache for models that lack ``generate`` (LongVA)."""
    from transformers import DynamicCache

    stops = stop_ids(tokenizer)
    ids = torch.tensor([prompt], device=model.device)
    pixels = None if video is None else video["pixel_values_videos"].to(model.device, model.dtype)
    cache = DynamicCache()
    out = model(input_ids=ids, pixel_values_videos=pixels, past_key_values=cache, use_cache=True)
    new: list[int] = []
    for _ in range(max_new_tokens):
        token = _next_token(out.logits[0, -1], do_sample, temperature, top_p)
        if token in stops:
            break
        new.append(token)
        out = model(input_ids=torch.tensor([[token]], device=model.device),
                    past_key_values=cache, use_cache=True)
    return _decode(tokenizer, new, stops)
