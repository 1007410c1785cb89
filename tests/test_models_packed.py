"""The packed prefix-shared forward equals the stock Hugging Face forward on unpacked rows.

For every supported family (tiny random-weight models, float32): per-sequence log-probs of the
chosen and rejected responses (relative 1e-5) and the gradients of every trainable parameter
(1e-4), against two unpacked rows per pair through the stock forward + log_softmax.
"""

import copy
from dataclasses import replace

import pytest
import torch

from tpo_fast.data.packer import PairPacker
from tpo_fast.models import SUPPORTED, PreferenceModel, adapter_class, adapter_for
from tpo_fast.models.stock import stock_pair_logps
from tpo_fast.models.tiny import FAMILIES, random_video, tiny_model, tiny_tokenizer

QUESTIONS = [
    "what colour was the circle that appeared between 0 : 04 and 0 : 06 ?",
    "how many shapes appeared ?",
    "what happened right after the red star vanished ?",
    "in what order did the colours appear ?",
    "which shape moved left ?",
]


def make_pairs(family, tokenizer, model, n_pairs, seed, one_token=False):
    adapter = adapter_for(model)
    step = 2 if family.startswith("qwen") else 1  # Qwen-VL: frames come in temporal patches
    gen = torch.Generator().manual_seed(seed)
    videos, prompts, chosen, rejected = [], [], [], []
    for i in range(n_pairs):
        frames = step * (1 + (i * 2 + seed) % 3)
        video = random_video(family, model.config, frames, seed=seed * 100 + i)
        videos.append(video)
        prompts.append(adapter.prompt_ids(tokenizer, QUESTIONS[(i + seed) % 5], video))
        lens = (1, 1) if one_token else (1 + (3 * i + seed) % 6, 1 + (5 * i + 2 * seed) % 4)
        chosen.append(torch.randint(20, len(tokenizer), (lens[0],), generator=gen).tolist())
        rejected.append(torch.randint(20, len(tokenizer), (lens[1],), generator=gen).tolist())
    return prompts, chosen, rejected, videos


def stock_logps(model, prompts, chosen, rejected, videos):
    """The obvious slow path: each pair as two rows through the stock forward + log_softmax."""
    return stock_pair_logps(model, prompts, chosen, rejected, videos)


def count_calls(module):
    calls = []
    handle = module.register_forward_hook(lambda *args: calls.append(1))
    return calls, handle


def check_equivalence(family, n_pairs, seed, one_token=False, **model_options):
    tokenizer = tiny_tokenizer(family)
    slow_model = tiny_model(family, tokenizer, seed=seed)
    fast = PreferenceModel(copy.deepcopy(slow_model), **model_options)
    trainable = {n: p.requires_grad for n, p in fast.model.named_parameters()}
    for name, p in slow_model.named_parameters():
        p.requires_grad_(trainable[name])
    pairs = make_pairs(family, tokenizer, slow_model, n_pairs, seed, one_token)
    weights = torch.randn(n_pairs, 2, generator=torch.Generator().manual_seed(seed))

    slow_calls, h1 = count_calls(adapter_for(slow_model).vision_tower())
    slow = stock_logps(slow_model, *pairs)
    (slow * weights).sum().backward()
    fast_calls, h2 = count_calls(fast.adapter.vision_tower())
    batch = PairPacker(fast.adapter).pack(*pairs)
    got = fast.policy_logps(batch)
    (got * weights).sum().backward()
    h1.remove(), h2.remove()

    torch.testing.assert_close(got, slow, rtol=1e-5, atol=0)
    # the packed path runs the tower once per micro-batch (ZeRO-3 needs a fixed call count)
    assert len(fast_calls) == 1 and len(slow_calls) == 2 * n_pairs
    checked = 0
    slow_params = dict(slow_model.named_parameters())
    for name, p in fast.model.named_parameters():
        ref = slow_params[name]
        if not p.requires_grad:
            assert p.grad is None and ref.grad is None, name
            continue
        if ref.grad is None:  # unused by a video forward in both (e.g. an image-only newline)
            assert p.grad is None, name
            continue
        assert p.grad is not None, name
        # fp32 sums over many tokens in a different order: absolute error scales with the
        # gradient's largest entry, not with each (possibly tiny) element
        scale = max(1.0, float(ref.grad.abs().max()))
        torch.testing.assert_close(p.grad, ref.grad, rtol=1e-4, atol=1e-6 * scale, msg=name)
        checked += 1
    assert checked > 10
    return fast, batch


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_video_features_equal_per_video(family):
    """One vision-tower call over videos of different lengths == one call per video."""
    tokenizer = tiny_tokenizer(family)
    model = tiny_model(family, tokenizer, seed=3)
    adapter = adapter_for(model)
    step = 2 if family.startswith("qwen") else 1
    videos = [random_video(family, model.config, step * k, seed=k) for k in (1, 3, 2)]
    with torch.no_grad():
        batched = adapter.batch_video_features(videos)
        single = adapter.merge_features([adapter.video_features(v) for v in videos])
    for name in ("pooler_output", "deepstack_features"):
        a, b = getattr(batched, name, None), getattr(single, name, None)
        assert (a is None) == (b is None), name
        if a is None:
            continue
        flat_a = torch.cat([torch.cat(x) if isinstance(x, tuple) else x for x in
                            (a if isinstance(a, list) else [a])], dim=-2)
        flat_b = torch.cat([torch.cat(x) if isinstance(x, tuple) else x for x in
                            (b if isinstance(b, list) else [b])], dim=-2)
        torch.testing.assert_close(flat_a, flat_b, rtol=1e-5, atol=1e-6, msg=name)
        if isinstance(a, tuple):  # per-video splits must line up too
            assert [t.shape for t in a] == [t.shape for t in b]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("n_pairs, seed", [(1, 0), (5, 1)])
def test_packed_equals_stock(family, n_pairs, seed):
    fast, batch = check_equivalence(family, n_pairs, seed)
    # Vision tower frozen by default, projector trained.
    assert not any(p.requires_grad for p in fast.adapter.vision_tower().parameters()
                   if id(p) not in {id(q) for q in fast.adapter.projector_parameters()})
    assert all(p.grad is not None for p in fast.adapter.projector_parameters())
    assert batch.n_pairs == n_pairs


@pytest.mark.parametrize("family", FAMILIES)
def test_one_token_responses(family):
    check_equivalence(family, 3, seed=2, one_token=True)


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_trainable_vision_tower(family):
    fast, _ = check_equivalence(family, 2, seed=3, train_vision_tower=True)
    name, first = next(iter(fast.adapter.vision_tower().named_parameters()))
    assert "patch" in name and first.grad is not None  # the gradient reaches the first layer


def test_everything_visual_frozen_runs_under_no_grad():
    tokenizer = tiny_tokenizer("qwen2_vl")
    fast = PreferenceModel(tiny_model("qwen2_vl", tokenizer), train_projector=False)
    pairs = make_pairs("qwen2_vl", tokenizer, fast.model, 2, seed=4)
    features = fast.encode_videos(pairs[3])
    assert not any(f.requires_grad for f in features.pooler_output)
    fast.policy_logps(PairPacker(fast.adapter).pack(*pairs)).sum().backward()
    assert all(p.grad is None for p in fast.adapter.vision_tower().parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_video_token_count_matches_the_model(family):
    tokenizer = tiny_tokenizer(family)
    model = tiny_model(family, tokenizer)
    adapter = adapter_for(model)
    step = 2 if family.startswith("qwen") else 1
    for frames in (step, 3 * step):
        video = random_video(family, model.config, frames)
        merged = adapter.merge_features([adapter.video_features(video)])
        rows = (torch.cat(merged.pooler_output) if isinstance(merged.pooler_output, tuple)
                else merged.pooler_output[0])
        assert rows.shape[0] == adapter.num_video_tokens(video)
        prompt = adapter.prompt_ids(tokenizer, "how many shapes appeared ?", video)
        assert prompt.count(adapter.video_token_id) == adapter.num_video_tokens(video)


def test_hidden_states_shape_and_lm_head():
    tokenizer = tiny_tokenizer("llava_onevision")
    fast = PreferenceModel(tiny_model("llava_onevision", tokenizer))
    pairs = make_pairs("llava_onevision", tokenizer, fast.model, 2, seed=5)
    batch = PairPacker(fast.adapter).pack(*pairs)
    hidden = fast.hidden_states(batch)
    assert hidden.shape == (len(batch.logit_index), fast.model.config.text_config.hidden_size)
    assert fast.lm_head_weight().shape == (len(tokenizer), hidden.shape[1])


def test_unsupported_model_lists_supported():
    with pytest.raises(ValueError, match="'gpt2' is not supported; supported video LLMs: "
                                         + ", ".join(SUPPORTED)):
        adapter_class("gpt2")


def test_bad_pairs_are_clear_errors():
    tokenizer = tiny_tokenizer("qwen2_vl")
    fast = PreferenceModel(tiny_model("qwen2_vl", tokenizer))
    prompts, chosen, rejected, videos = make_pairs("qwen2_vl", tokenizer, fast.model, 2, seed=6)
    video_id = fast.adapter.video_token_id
    packer = PairPacker(fast.adapter)
    longer = {"pixel_values_videos": torch.randn(8 * 16, 96),
              "video_grid_thw": torch.tensor([[8, 4, 4]])}
    with pytest.raises(ValueError, match="pair 1: the prompt holds .* video tokens but its video"):
        packer.pack(prompts, chosen, rejected, [videos[0], longer])
    with pytest.raises(ValueError, match="pair 0: the rejected response holds a video token"):
        packer.pack(prompts, chosen, [[video_id], rejected[1]], videos)
    with pytest.raises(ValueError, match=r"pair 0's video lacks \['video_grid_thw'\]"):
        packer.pack(prompts, chosen, rejected, [{"pixel_values_videos": videos[0][
            "pixel_values_videos"]}, videos[1]])
    with pytest.raises(ValueError, match="means 32 patches"):
        packer.pack(prompts, chosen, rejected, [videos[0] | {"video_grid_thw": torch.tensor(
            [[2, 4, 4]])}, videos[1]])
    with pytest.raises(ValueError, match="one video per pair"):
        fast.hidden_states(replace(packer.pack(prompts, chosen, rejected, videos), videos=None))
    with pytest.raises(ValueError, match="unknown attention backend"):
        PreferenceModel(fast.model, attention_backend="fast")


def test_prompt_errors():
    tokenizer = tiny_tokenizer("llava_onevision")
    model = tiny_model("llava_onevision", tokenizer)
    adapter = adapter_for(model)
    video = random_video("llava_onevision", model.config, 2)
    with pytest.raises(ValueError, match="2 video placeholders"):
        adapter.prompt_ids(tokenizer, "what is in the <video> ?", video)
    with pytest.raises(ValueError, match="empty question"):
        adapter.prompt_ids(tokenizer, "  ", video)
    with pytest.raises(ValueError, match="empty response"):
        adapter.response_ids(tokenizer, " ")
    ids = adapter.response_ids(tokenizer, "a red circle")
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>") and len(ids) == 4
    prompt = adapter.prompt_ids(tokenizer, "how many shapes ?", video, system="you are helpful")
    text = tokenizer.decode(prompt)
    assert text.startswith("<|im_start|> system you are helpful <|im_end|>")
    assert text.endswith("how many shapes ? <|im_end|> <|im_start|> assistant")


def test_qwen3_timestamps_in_prompt():
    tokenizer = tiny_tokenizer("qwen3_vl")
    model = tiny_model("qwen3_vl", tokenizer)
    adapter = adapter_for(model)
    video = random_video("qwen3_vl", model.config, 4, fps=2.0)  # frames at 0, 0.5, 1, 1.5 s
    text = tokenizer.decode(adapter.prompt_ids(tokenizer, "how many shapes ?", video))
    # One block per temporal patch, stamped with the mean time of its two frames.
    assert text.count("<|vision_start|>") == 3  # the template's own one, then two blocks
    assert "< 0 . 2 seconds > <|vision_start|>" in text
    assert "< 1 . 2 seconds > <|vision_start|>" in text
    with pytest.raises(ValueError, match="5 frame_timestamps for a video of 2 temporal patches"):
        adapter.prompt_ids(tokenizer, "how many ?", video | {"frame_timestamps": [0, 1, 2, 3, 4]})


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["sdpa", "flex", "torch_varlen", "flash_attn"])
@pytest.mark.parametrize("family", FAMILIES)
def test_packed_bf16_on_cuda(family, backend):
    """bf16 packed log-probs on CUDA: error against the float32 stock path at most twice the
    error of the bf16 stock path itself."""
    from tpo_fast.attention import available_backends

    if backend not in available_backends("cuda"):
        pytest.skip(f"{backend} not installed")
    tokenizer = tiny_tokenizer(family)
    truth_model = tiny_model(family, tokenizer, seed=7).cuda()
    pairs = make_pairs(family, tokenizer, truth_model, 4, seed=7)
    pairs = (*pairs[:3], [{k: v.cuda() if torch.is_tensor(v) else v for k, v in video.items()}
                          for video in pairs[3]])
    with torch.no_grad():
        truth = stock_logps(truth_model, *pairs)
        bf16 = copy.deepcopy(truth_model).to(torch.bfloat16)
        stock_bf16 = stock_logps(bf16, *pairs)
        fast = PreferenceModel(bf16, attention_backend=backend)
        got = fast.policy_logps(PairPacker(fast.adapter).pack(*pairs))
    assert (got - truth).abs().max() <= 2 * (stock_bf16 - truth).abs().max() + 1e-2


def test_packed_forward_benchmark_smoke(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    out = subprocess.run([sys.executable, "-m", "benchmarks.packed_forward", "--smoke", "--out",
                          str(tmp_path / "r.json")], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "r.json").read_text())["results"]
    assert {"unpacked_full_logits", "unpacked_response_head", "packed[sdpa]"} <= set(result)
    assert all(entry["fwd_bwd"]["median_s"] > 0 for entry in result.values())
