"""Every supported transformers family (most through the generic adapter): packed log-probs
and gradients equal the stock Hugging Face forward on two unpacked rows per pair.

Tolerance from the reference's own error (STYLE item 3): the ground truth is the stock forward
in float64; the packed float32 path must be within twice the error of the stock float32 path
(plus a few float32 ulps of the value's scale), for the per-sequence log-probs and for the
gradient of every trainable parameter.
"""

import copy

import pytest
import torch

from tpo_fast.data.packer import PairPacker
from tpo_fast.models import PreferenceModel, adapter_for, supported_families
from tpo_fast.models.generic import GenericVideoAdapter, UnsupportedModelError
from tpo_fast.models.registry import GENERIC_FAMILIES, packed_families
from tpo_fast.models.stock import stock_pair_logps
from tpo_fast.models.tiny import FAMILIES, random_video, tiny_model, tiny_tokenizer

QUESTIONS = ["how many shapes appeared ?", "what happened right after the red star vanished ?",
             "which shape moved left ?"]
EPS32 = torch.finfo(torch.float32).eps


def frame_step(config) -> int:
    vision = config.vision_config
    return getattr(vision, "temporal_patch_size", 1) * getattr(vision, "temporal_merge_size", 1)


def make_pairs(family, tokenizer, model, n_pairs, seed):
    """n_pairs pairs of different video lengths, prompt lengths and response lengths."""
    adapter = adapter_for(model)
    step = frame_step(model.config)
    gen = torch.Generator().manual_seed(seed)
    videos, prompts, chosen, rejected = [], [], [], []
    for i in range(n_pairs):
        video = random_video(family, model.config, step * (1 + i % 2), seed=seed * 100 + i)
        videos.append(video)
        prompts.append(adapter.prompt_ids(tokenizer, QUESTIONS[i % 3], video))
        lens = (1 + (3 * i + seed) % 5, 1 + (2 * i + seed) % 3)
        chosen.append(torch.randint(40, len(tokenizer), (lens[0],), generator=gen).tolist())
        rejected.append(torch.randint(40, len(tokenizer), (lens[1],), generator=gen).tolist())
    return prompts, chosen, rejected, videos


def require_family(family):
    """Families of a newer transformers than the installed one are skipped (GPU machine)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if family not in CONFIG_MAPPING_NAMES:
        pytest.skip(f"{family} is not in this transformers")


def stock_logps(model, adapter, prompts, chosen, rejected, videos):
    """Each pair as two rows through the stock forward (pixels in, logits out) + log_softmax
    (the adapter is the one ``stock_pair_logps`` finds for the model)."""
    assert type(adapter_for(model)) is type(adapter)
    return stock_pair_logps(model, prompts, chosen, rejected, videos)


def _within(got, ref, truth, what):
    """err(got) <= 2 err(ref) + 8 ulp of the truth's scale (elementwise error, max-reduced)."""
    truth = truth.double()
    err_got = (got.detach().double() - truth).abs().max()
    err_ref = (ref.detach().double() - truth).abs().max()
    bound = 2 * err_ref + 8 * EPS32 * max(1.0, float(truth.abs().max()))
    assert err_got <= bound, f"{what}: error {float(err_got):.3g} > {float(bound):.3g} " \
                             f"(stock float32 error {float(err_ref):.3g})"


def check_family(family, n_pairs=2, seed=0):
    require_family(family)
    tokenizer = tiny_tokenizer(family)
    slow = tiny_model(family, tokenizer, seed=seed)
    fast = PreferenceModel(copy.deepcopy(slow))
    trainable = {n: p.requires_grad for n, p in fast.model.named_parameters()}
    for name, p in slow.named_parameters():
        p.requires_grad_(trainable[name])
    truth_model = copy.deepcopy(slow).double()
    pairs = make_pairs(family, tokenizer, slow, n_pairs, seed)
    weights = torch.randn(n_pairs, 2, generator=torch.Generator().manual_seed(seed))

    grads = {}
    for name, model in (("truth", truth_model), ("stock", slow)):
        logps = stock_logps(model, fast.adapter, *pairs)
        (logps * weights.to(logps.dtype)).sum().backward()
        grads[name] = (logps.detach(), dict(model.named_parameters()))
    calls = []
    hook = fast.adapter.vision_tower().register_forward_hook(lambda *args: calls.append(1))
    batch = PairPacker(fast.adapter).pack(*pairs)
    got = fast.policy_logps(batch)
    (got * weights).sum().backward()
    hook.remove()
    # one vision-tower call per micro-batch (ZeRO-3 needs the same calls on every rank), and
    # none while packing (token counts come from formulas, not from running the tower)
    assert len(calls) == 1, f"{family}: {len(calls)} vision-tower calls"

    _within(got, grads["stock"][0], grads["truth"][0], f"{family} log-probs")
    checked = 0
    for name, p in fast.model.named_parameters():
        ref, truth = grads["stock"][1][name].grad, grads["truth"][1][name].grad
        if not p.requires_grad or truth is None:  # frozen, or unused by a video forward
            assert p.grad is None or not p.grad.any(), name
            continue
        assert p.grad is not None, f"{family}: {name} got no gradient"
        _within(p.grad, ref, truth, f"{family} grad {name}")
        checked += 1
    assert checked > 10
    return fast, batch


SUPPORTED_GENERIC = [f for f in packed_families() if f not in FAMILIES]
# every transformers family (LongVA is no transformers model: tests/test_longva.py and
# tests/test_models_packed.py check it against its own unpacked forward)
TRANSFORMERS_FAMILIES = [f for f in packed_families() if f not in ("longva", "llava_video")]


def test_supported_families_are_all_tested():
    assert len(TRANSFORMERS_FAMILIES) >= 15
    assert set(SUPPORTED_GENERIC) == set(GENERIC_FAMILIES) - set(FAMILIES)
    assert set(packed_families()) == set(TRANSFORMERS_FAMILIES) | {"longva", "llava_video"}
    assert set(supported_families()) <= set(packed_families())


@pytest.mark.parametrize("family", TRANSFORMERS_FAMILIES)
def test_packed_equals_stock(family):
    fast, batch = check_family(family, n_pairs=2, seed=1)  # videos of 1 and 2 frame steps
    assert batch.n_pairs == 2 and len(set(batch.cu_seqlens_q.diff().tolist())) > 1
    # vision tower frozen (but its projector), projector trained
    projector = {id(p) for p in fast.adapter.projector_parameters()}
    assert projector
    assert not any(p.requires_grad for p in fast.adapter.vision_tower().parameters()
                   if id(p) not in projector)
    assert any(p.grad is not None for p in fast.adapter.projector_parameters())


@pytest.mark.parametrize("family", SUPPORTED_GENERIC)
def test_video_token_count_matches_the_features(family):
    require_family(family)
    tokenizer = tiny_tokenizer(family)
    model = tiny_model(family, tokenizer)
    adapter = adapter_for(model)
    step = frame_step(model.config)
    for frames in (step, 3 * step):
        video = random_video(family, model.config, frames)
        with torch.no_grad():
            features = adapter.video_features(video)
        pooled = features.pooler_output
        rows = sum(p.reshape(-1, p.shape[-1]).shape[0] for p in pooled) if isinstance(
            pooled, (tuple, list)) else pooled.reshape(-1, pooled.shape[-1]).shape[0]
        assert rows == adapter.num_video_tokens(video)
        prompt = adapter.prompt_ids(tokenizer, "how many shapes appeared ?", video)
        assert prompt.count(adapter.video_token_id) == rows


@pytest.mark.parametrize("family, lacks", [
    ("qwen3_5", "linear_attention"),       # Gated DeltaNet layers: no keys to share
    ("qwen3_5_moe", "linear_attention"),
    ("qwen4_exp", "linear_attention"),
    ("glm5_next", "linear_attention"),
    ("exaone4_5", "sliding_attention"),    # sliding windows
])
def test_unfit_language_models_are_named(family, lacks):
    require_family(family)
    tokenizer = tiny_tokenizer(family)
    with pytest.raises(UnsupportedModelError, match=lacks):
        PreferenceModel(tiny_model(family, tokenizer))


def test_image_only_model_lacks_video():
    from transformers import AutoConfig, AutoModelForImageTextToText

    tokenizer = tiny_tokenizer("qwen2_vl")
    config = AutoConfig.for_model(
        "llava", text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=32,
                                  intermediate_size=64, num_hidden_layers=1,
                                  num_attention_heads=4, num_key_value_heads=2),
        vision_config=dict(model_type="clip_vision_model", hidden_size=16, intermediate_size=32,
                           num_hidden_layers=1, num_attention_heads=2, image_size=16,
                           patch_size=4), image_token_id=7)
    model = AutoModelForImageTextToText.from_config(config)
    with pytest.raises(UnsupportedModelError, match="llava.*takes no video input.*"
                                                    "get_video_features"):
        adapter_for(model)
    with pytest.raises(UnsupportedModelError, match="get_video_features"):
        GenericVideoAdapter(model)


def test_adapter_class_and_unknown_types():
    from tpo_fast.models import SUPPORTED, adapter_class

    assert adapter_class("hyperclovax_vision_v2") is GenericVideoAdapter
    assert adapter_class("glm4v").__name__ == "Glm4vStyleAdapter"
    assert SUPPORTED == supported_families()
    with pytest.raises(ValueError, match="'gpt2' is not supported"):
        adapter_class("gpt2")


def test_fractional_rope_positions_are_refused():
    """Qwen3-Omni's thinker spaces temporal patches by seconds × position_id_per_seconds
    position ids, unrounded (0.37 s × 25 = 9.25)."""
    from tpo_fast.models.omni import OmniThinkerAdapter

    family = "qwen3_omni_moe_thinker"
    tokenizer = tiny_tokenizer(family)
    model = tiny_model(family, tokenizer)
    adapter = OmniThinkerAdapter(model)
    video = random_video(family, model.config, 4) | {"video_second_per_grid": torch.tensor([0.37])}
    prompt = adapter.prompt_ids(tokenizer, "how many shapes appeared ?", video)
    positions = adapter.position_ids_fn([prompt], [video])
    with pytest.raises(UnsupportedModelError, match="fractional positions"):
        positions(0, len(prompt), 2)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["sdpa", "flex", "torch_varlen", "flash_attn"])
@pytest.mark.parametrize("family", TRANSFORMERS_FAMILIES)
def test_packed_bf16_on_cuda(family, backend):
    """bf16 packed log-probs on CUDA: error against the float32 stock path at most twice the
    error of the bf16 stock path itself (plus 1e-2)."""
    from tpo_fast.attention import available_backends

    require_family(family)
    if backend not in available_backends("cuda"):
        pytest.skip(f"{backend} not installed")
    tokenizer = tiny_tokenizer(family)
    truth_model = tiny_model(family, tokenizer, seed=7).cuda()
    adapter = adapter_for(truth_model)
    prompts, chosen, rejected, videos = make_pairs(family, tokenizer, truth_model, 3, seed=7)
    videos = [{k: v.cuda() if torch.is_tensor(v) else v for k, v in video.items()}
              for video in videos]
    pairs = (prompts, chosen, rejected, videos)
    with torch.no_grad():
        truth = stock_logps(truth_model, adapter, *pairs)
        bf16 = copy.deepcopy(truth_model).to(torch.bfloat16)
        stock_bf16 = stock_logps(bf16, adapter, *pairs)
        fast = PreferenceModel(bf16, attention_backend=backend)
        got = fast.policy_logps(PairPacker(fast.adapter).pack(*pairs))
    assert (got - truth).abs().max() <= 2 * (stock_bf16 - truth).abs().max() + 1e-2
