"""Tiny random-weight video LLMs of every supported family, built from configs, with a local
word-level tokenizer and chat template: for tests, the embedded default and benchmarks. Nothing
is downloaded.
"""

from __future__ import annotations

import torch

FAMILIES = ("llava_onevision", "llava_next_video", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "longva",
            "llava_video")

SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<video>",
                  "<image>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>",
                  "<|image_pad|>"]
BASE_WORDS = (
    "system user assistant USER ASSISTANT you are a an the helpful video what when where which "
    "who how many much is was were did does do it its this that shape shapes circle square "
    "triangle star red green blue yellow purple orange white black appeared disappeared "
    "vanished moved changed left right up down after before between during first second third "
    "last then and or of in on at to from seconds answer option yes no colour color order "
    "count number happened right end start time . , ? : ! ( ) - < >"
).split() + [str(d) for d in range(10)]

_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'video' %}VIDEO{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_VICUNA = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: {% elif m['role'] == 'assistant' %}"
    "ASSISTANT: {% endif %}{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'video' %}<video>\n{% elif c['type'] == "
    "'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% if m['role'] == 'assistant' %}</s>{% endif %} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
CHAT_TEMPLATES = {
    "llava_onevision": _CHATML.replace("VIDEO", "<video>\n"),
    "llava_next_video": _VICUNA,
    "qwen2_vl": _CHATML.replace("VIDEO", "<|vision_start|><|video_pad|><|vision_end|>"),
}
CHAT_TEMPLATES["qwen2_5_vl"] = CHAT_TEMPLATES["qwen3_vl"] = CHAT_TEMPLATES["qwen2_vl"]
CHAT_TEMPLATES["longva"] = _CHATML.replace("VIDEO", "<image>\n")  # LongVA renders its own prompt
CHAT_TEMPLATES["llava_video"] = CHAT_TEMPLATES["longva"]  # (as does LLaVA-Video)


def tiny_tokenizer(family: str, words: list[str] | None = None, lowercase: bool = False):
    """A word-level ``PreTrainedTokenizerFast`` with the family's chat template (``lowercase``:
    lower-case text before splitting it)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    _check_family(family)
    generic = family not in FAMILIES
    specials = SPECIAL_TOKENS + (EXTRA_SPECIAL_TOKENS if generic else [])
    vocab = {}
    for token in specials + BASE_WORDS + list(words or []):
        vocab.setdefault(token, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(),
        pre_tokenizers.Digits(individual_digits=True),
    ])
    tok.add_special_tokens(specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
        eos_token="</s>", chat_template=CHAT_TEMPLATES.get(
            family, _IMAGE_TEMPLATE if family in IMAGE_FRAME_FAMILIES else _GENERIC_TEMPLATE),
    )


def tiny_config(family: str, tokenizer, frame_size: int = 16, hidden: int = 32, layers: int = 2):
    """A tiny config (GQA: 4 query heads, 2 kv heads) whose vision input is frame_size pixels."""
    from transformers import AutoConfig

    _check_family(family)
    if family not in FAMILIES:
        return tiny_generic_config(family, tokenizer, frame_size, hidden, layers)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=8192, bos_token_id=ids["<s>"], eos_token_id=ids["</s>"],
                pad_token_id=ids["<pad>"], tie_word_embeddings=False)
    if family == "longva":
        return _tiny_longva_config(text, frame_size)
    if family == "llava_video":
        return _tiny_llava_video_config(text, frame_size)
    if family.startswith("llava"):
        vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, image_size=frame_size, patch_size=4)
        extra = {}
        if family == "llava_onevision":
            vision["model_type"] = "siglip_vision_model"
            text["model_type"] = "qwen2"
            extra["vision_feature_select_strategy"] = "full"
        else:
            vision.update(model_type="clip_vision_model", projection_dim=16)
            text["model_type"] = "llama"
        return AutoConfig.for_model(
            family, vision_config=vision, text_config=text, image_token_id=ids["<image>"],
            video_token_id=ids["<video>"], vision_feature_layer=-1,
            tie_word_embeddings=False, **extra)
    head_dim = hidden // 4
    text["rope_parameters"] = dict(rope_type="default", rope_theta=10000.0,
                                   mrope_section=[head_dim // 8, head_dim // 8, head_dim // 4])
    vision = dict(depth=2, patch_size=4, temporal_patch_size=2, spatial_merge_size=2,
                  in_channels=3)
    if family == "qwen2_vl":
        vision.update(embed_dim=16, hidden_size=hidden, num_heads=2, mlp_ratio=2)
    elif family == "qwen2_5_vl":
        vision.update(hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=hidden,
                      window_size=frame_size, fullatt_block_indexes=[1])
    else:
        text.update(head_dim=head_dim)
        text["rope_parameters"]["mrope_interleaved"] = True
        vision.update(hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=hidden,
                      num_position_embeddings=64, deepstack_visual_indexes=[0])
    return AutoConfig.for_model(
        family, vision_config=vision, text_config=text, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)


def tiny_model(family: str, tokenizer, *, seed: int = 0, attn_implementation: str = "sdpa",
               dtype: torch.dtype = torch.float32, **config_kwargs):
    """A randomly initialised ``<Family>ForConditionalGeneration`` (deterministic for a seed)."""
    config = tiny_config(family, tokenizer, **config_kwargs)
    torch.manual_seed(seed)
    if family == "longva":  # not a transformers model class: CLIP + projector + Qwen2 composed
        from tpo_fast.models.longva import LongVAForCausalLM

        return LongVAForCausalLM(config, attn_implementation=attn_implementation).to(dtype).eval()
    if family == "llava_video":  # LLaVA-NeXT layout too: SigLIP + projector + newline + Qwen2
        from tpo_fast.models.llava_video import LlavaVideoForCausalLM

        model = LlavaVideoForCausalLM(config, attn_implementation=attn_implementation)
        torch.nn.init.normal_(model.image_newline, std=config.text_config.hidden_size ** -0.5)
        return model.to(dtype).eval()
    options = dict(attn_implementation=attn_implementation, dtype=dtype)
    if family in GENERIC_TINY_FAMILIES:
        # plain-loop MoE experts: grouped_mm has no float64 (the tests' ground truth) on CPU
        options["experts_implementation"] = "eager"
    return _model_class(config).from_config(config, **options).eval()


def random_video(family: str, config, frames: int, seed: int = 0, fps: float = 2.0,
                 frame_size: int = 16) -> dict:
    """Random model inputs for one video of ``frames`` frames (what preprocessing would make)."""
    _check_family(family)
    g = torch.Generator().manual_seed(seed)
    if family in IMAGE_FRAME_FAMILIES:
        size = frame_size
        frames_ = torch.randn(frames, 3, size, size, generator=g)
        return {"pixel_values": frames_[None] if family == "smolvlm" else frames_}
    if family in FRAME_FAMILIES or family.startswith(("llava", "longva")):
        size = config.vision_config.image_size
        video = {"pixel_values_videos": torch.randn(1, frames, 3, size, size, generator=g)}
        if family == "llava_video":  # what its time instruction states
            video["frame_timestamps"] = [(i + 0.5) / fps for i in range(frames)]
            video["video_seconds"] = frames / fps
        return video
    vision = config.vision_config
    tp, p = getattr(vision, "temporal_patch_size", 1), vision.patch_size
    tm = getattr(vision, "temporal_merge_size", 1)  # ERNIE-4.5-VL merges grid steps in time
    if frames % (tp * tm):
        raise ValueError(f"{family} videos need a multiple of {tp * tm} frames, got {frames}")
    channels = getattr(vision, "in_channels", None) or getattr(vision, "num_channels", 3)
    if frames % tp:
        raise ValueError(f"Qwen-VL videos need a multiple of {tp} frames, got {frames}")
    side = frame_size // p
    grid = torch.tensor([[frames // tp, side, side]])
    video = {"pixel_values_videos": torch.randn(int(grid.prod()), channels * tp * p * p,
                                                generator=g),
             "video_grid_thw": grid}
    if family == "qwen2_5_vl":
        video["second_per_grid_ts"] = torch.tensor([tp / fps])
    if family == "qwen3_vl" or family in GRID_FAMILIES:
        video["frame_timestamps"] = [i / fps for i in range(frames)]
    if family.endswith("omni_thinker") or family == "qwen3_omni_moe_thinker":
        video["video_second_per_grid"] = torch.tensor([tp / fps])
    if family == "video_llama_3":  # its processor's per-video spatial merge
        video["video_merge_sizes"] = torch.tensor([2])
    if family == "kimi_k25":  # patches as [N, C, p, p] images
        video["pixel_values_videos"] = video["pixel_values_videos"].reshape(-1, channels, p, p)
    return video


def _tiny_longva_config(text: dict, frame_size: int):
    """A LongVA config: its LLaVA-NeXT config.json fields (tiny sizes) and a tiny CLIP tower."""
    from tpo_fast.models.longva import LongVAConfig

    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                  image_size=frame_size, patch_size=4)
    llava = dict(text, architectures=["LlavaQwenForCausalLM"], model_type="llava_qwen",
                 hidden_act="silu", rms_norm_eps=1e-6, rope_theta=1e6, use_sliding_window=False,
                 torch_dtype="float32", mm_vision_tower="tiny-random-clip", mm_hidden_size=16,
                 mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2,
                 mm_vision_select_feature="patch", mm_patch_merge_type="unires",
                 mm_spatial_pool_mode="average", mm_spatial_pool_stride=2,
                 mm_resampler_type=None, mm_use_im_start_end=False, image_aspect_ratio="anyres")
    return LongVAConfig(llava, vision)


def _tiny_llava_video_config(text: dict, frame_size: int):
    """A LLaVA-Video config: the LLaVA-Video-7B-Qwen2 config.json fields (tiny sizes; see
    tpo_fast.models.llava_video) and a tiny SigLIP tower."""
    from tpo_fast.models.llava_video import LlavaVideoConfig

    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                  image_size=frame_size, patch_size=4)
    llava = dict(text, architectures=["LlavaQwenForCausalLM"], model_type="llava",
                 hidden_act="silu", rms_norm_eps=1e-6, rope_theta=1e6, use_sliding_window=False,
                 torch_dtype="float32", mm_vision_tower="tiny-random-siglip", mm_hidden_size=16,
                 mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2,
                 mm_vision_select_feature="patch", mm_patch_merge_type="spatial_unpad",
                 mm_newline_position="grid", mm_spatial_pool_mode="bilinear",
                 mm_spatial_pool_stride=2, mm_resampler_type=None, mm_use_im_start_end=False,
                 mm_use_im_patch_token=False, image_aspect_ratio="anyres_max_9",
                 add_faster_video=False, faster_token_stride=10, add_time_instruction=True,
                 force_sample=True)
    return LlavaVideoConfig(llava, vision)


def _check_family(family: str) -> None:
    if family not in FAMILIES and family not in GENERIC_TINY_FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; choose from "
                         f"{FAMILIES + GENERIC_TINY_FAMILIES}")


# ---- families run through the generic adapter ------------------------------------------------
# Grid families take Qwen-VL-style inputs (patch rows + video_grid_thw); frame families take
# [1, F, 3, S, S] like LLaVA.
GRID_FAMILIES = ("qwen3_vl_moe", "glm4v", "glm4v_moe", "glm46v", "glm_ocr", "ernie4_5_vl_moe",
                 "qwen2_5_omni_thinker", "video_llama_3", "cohere_compass", "cosmos3_edge",
                 "kimi_k25", "hyperclovax_vision_v2", "minimax_m3_vl",
                 # these build, and the adapter refuses them (tests/models/test_models_generic.py)
                 "qwen3_omni_moe_thinker", "qwen3_5", "qwen3_5_moe", "qwen4_exp", "glm5_next",
                 "exaone4_5")
FRAME_FAMILIES = ("video_llava",)
IMAGE_FRAME_FAMILIES = ("internvl", "smolvlm")  # a video as its frames, each an image
GENERIC_TINY_FAMILIES = GRID_FAMILIES + FRAME_FAMILIES + IMAGE_FRAME_FAMILIES
EXTRA_SPECIAL_TOKENS = [f"<|special_{k}|>" for k in range(16)]
_GENERIC_TEMPLATE = _CHATML.replace("VIDEO", "<|vision_start|><|video_pad|><|vision_end|>")
_IMAGE_TEMPLATE = _CHATML.replace("VIDEO", "<|image_pad|>\n")
# config token fields -> tiny tokens (others get the extra specials, in name order)
_TOKEN_FIELDS = {"image_token_id": "<|image_pad|>", "image_token_index": "<|image_pad|>",
                 "video_token_id": "<|video_pad|>", "video_token_index": "<|video_pad|>",
                 "vision_start_token_id": "<|vision_start|>",
                 "vision_end_token_id": "<|vision_end|>"}
_TEXT_SIZES = dict(hidden_size=None, intermediate_size=None, num_hidden_layers=None,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                   moe_intermediate_size=32, shared_expert_intermediate_size=32,
                   num_experts=4, num_local_experts=4, n_routed_experts=4, moe_num_experts=4,
                   num_experts_per_tok=2, moe_k=2, n_shared_experts=1, moe_num_shared_experts=1,
                   first_k_dense_replace=1, max_position_embeddings=4096, n_group=1,
                   topk_group=1, tie_word_embeddings=False, use_sliding_window=False)
_VISION_SIZES = dict(depth=2, num_hidden_layers=2, hidden_size=16, embed_dim=16,
                     intermediate_size=32, num_heads=2, num_attention_heads=2,
                     num_key_value_heads=2, patch_size=4, num_position_embeddings=64,
                     deepstack_visual_indexes=[0], fullatt_block_indexes=[1])


_TEXT_OVERRIDES = {
    "glm5_next": dict(num_key_value_heads=4),  # its attention needs as many kv heads as heads
    "kimi_k25": dict(q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
                     qk_head_dim=16, v_head_dim=12, head_dim=8, num_key_value_heads=4),  # MLA
    "cohere_compass": dict(rope_parameters={"full_attention": dict(
        rope_type="default", rope_theta=10000.0, mrope_section=[2, 3, 3])}),  # per layer type
    "ernie4_5_vl_moe": dict(rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                                 mrope_section=[3, 3, 2])),  # h, w, t
}


def tiny_generic_config(family: str, tokenizer, frame_size: int = 16, hidden: int = 64,
                        layers: int = 2):
    """A tiny config for a family of the generic adapter: the family's default config with
    every size field that it has shrunk (text: ``hidden`` wide, 4 heads of 16, 2 kv heads,
    4 experts; vision: 2 layers, 16 wide, 4-pixel patches), and its token ids mapped to tiny
    tokenizer specials."""
    from transformers import AutoConfig

    hidden = max(hidden, 64)  # 4 heads of 16: M-RoPE sections need a few rotary pairs
    defaults = AutoConfig.for_model(family)
    text = defaults.get_text_config().to_dict()
    sizes = dict(_TEXT_SIZES, hidden_size=hidden, intermediate_size=2 * hidden,
                 num_hidden_layers=layers)
    for key, value in sizes.items():
        if key in text:
            text[key] = [value] * len(text[key]) if isinstance(text[key], list) else value
    text.update(_TEXT_OVERRIDES.get(family, {}))
    if isinstance(text.get("layer_types"), list):
        text["layer_types"] = text["layer_types"][:layers]
    if "mlp_layer_types" in text and isinstance(text["mlp_layer_types"], list):
        text["mlp_layer_types"] = text["mlp_layer_types"][:layers]
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS + EXTRA_SPECIAL_TOKENS}
    text.update(vocab_size=len(tokenizer), bos_token_id=ids["<s>"], eos_token_id=ids["</s>"],
                pad_token_id=ids["<pad>"])
    rope = text.get("rope_parameters")
    if isinstance(rope, dict) and "rope_type" in rope and family not in _TEXT_OVERRIDES:
        # M-RoPE sections (ignored by 1-D families) summing to half the rotary dimension
        rotary = int(text.get("head_dim") or hidden // 4) * rope.get("partial_rotary_factor", 1)
        half = int(rotary) // 2
        t = half // 4
        rope["mrope_section"] = [t, (half - t) // 2, half - t - (half - t) // 2]
    vision = defaults.vision_config.to_dict()
    for key, value in _VISION_SIZES.items():
        if key in vision:
            vision[key] = value
    for key in ("out_hidden_size", "projection_dim", "text_hidden_size"):
        if key in vision:
            vision[key] = hidden if key != "projection_dim" else 16
    for key in ("image_size", "window_size"):
        if key in vision:
            vision[key] = [frame_size] * 2 if isinstance(vision[key], list) else frame_size
    if isinstance(vision.get("patch_size"), list):
        vision["patch_size"] = [4, 4]
    extras = iter(EXTRA_SPECIAL_TOKENS)
    tokens = {}
    for name in sorted(vars(defaults)):
        if name.endswith(("_token_id", "_token_index")) and name not in (
                "pad_token_id", "bos_token_id", "eos_token_id"):
            if isinstance(getattr(defaults, name), int):
                tokens[name] = ids[_TOKEN_FIELDS.get(name) or next(extras)]
    top = {k: v for k, v in defaults.to_diff_dict().items()
           if k not in ("text_config", "vision_config", "audio_config", "transformers_version",
                        "model_type")}
    kwargs = dict(top, text_config=text, vision_config=vision, **tokens)
    if "audio_config" in defaults.sub_configs:
        kwargs["audio_config"] = _tiny_audio(defaults.audio_config.to_dict(), hidden)
    kwargs["tie_word_embeddings"] = False
    if family.endswith("omni_thinker") or family == "qwen3_omni_moe_thinker":
        # its rope index finds videos after vision_start (a field of the released configs)
        kwargs["vision_start_token_id"] = ids["<|vision_start|>"]
    if "projection_hidden_size" in top:  # Kimi-K2.5's projector width
        kwargs["projection_hidden_size"] = 16
    return AutoConfig.for_model(family, **kwargs)


def _tiny_audio(audio: dict, hidden: int) -> dict:
    sizes = dict(encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32, d_model=16,
                 num_mel_bins=16, output_dim=hidden, n_window=4, max_source_positions=64)
    return {k: sizes.get(k, v) for k, v in audio.items()}


def _model_class(config):
    from tpo_fast.models.folder import model_class

    return model_class(config)
