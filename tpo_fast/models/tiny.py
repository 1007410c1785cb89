"""Tiny random-weight video LLMs of every supported family, built from configs, with a local
word-level tokenizer and chat template: for tests, the embedded default and benchmarks. Nothing
is downloaded.
"""

from __future__ import annotations

import torch

FAMILIES = ("llava_onevision", "llava_next_video", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "longva")

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


def tiny_tokenizer(family: str, words: list[str] | None = None, lowercase: bool = False):
    """A word-level ``PreTrainedTokenizerFast`` with the family's chat template (``lowercase``:
    lower-case text before splitting it)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    _check_family(family)
    vocab = {}
    for token in SPECIAL_TOKENS + BASE_WORDS + list(words or []):
        vocab.setdefault(token, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(),
        pre_tokenizers.Digits(individual_digits=True),
    ])
    tok.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
        eos_token="</s>", chat_template=CHAT_TEMPLATES[family],
    )


def tiny_config(family: str, tokenizer, frame_size: int = 16, hidden: int = 32, layers: int = 2):
    """A tiny config (GQA: 4 query heads, 2 kv heads) whose vision input is frame_size pixels."""
    from transformers import AutoConfig

    _check_family(family)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=8192, bos_token_id=ids["<s>"], eos_token_id=ids["</s>"],
                pad_token_id=ids["<pad>"], tie_word_embeddings=False)
    if family == "longva":
        return _tiny_longva_config(text, frame_size)
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
    from transformers import AutoModelForImageTextToText

    config = tiny_config(family, tokenizer, **config_kwargs)
    torch.manual_seed(seed)
    if family == "longva":  # not a transformers model class: CLIP + projector + Qwen2 composed
        from tpo_fast.models.longva import LongVAForCausalLM

        return LongVAForCausalLM(config, attn_implementation=attn_implementation).to(dtype).eval()
    model = AutoModelForImageTextToText.from_config(config, attn_implementation=attn_implementation,
                                                    dtype=dtype)
    return model.eval()


def random_video(family: str, config, frames: int, seed: int = 0, fps: float = 2.0,
                 frame_size: int = 16) -> dict:
    """Random model inputs for one video of ``frames`` frames (what preprocessing would make)."""
    _check_family(family)
    g = torch.Generator().manual_seed(seed)
    if family.startswith(("llava", "longva")):
        size = config.vision_config.image_size
        return {"pixel_values_videos": torch.randn(1, frames, 3, size, size, generator=g)}
    vision = config.vision_config
    tp, p = vision.temporal_patch_size, vision.patch_size
    if frames % tp:
        raise ValueError(f"Qwen-VL videos need a multiple of {tp} frames, got {frames}")
    side = frame_size // p
    grid = torch.tensor([[frames // tp, side, side]])
    video = {"pixel_values_videos": torch.randn(int(grid.prod()), 3 * tp * p * p, generator=g),
             "video_grid_thw": grid}
    if family == "qwen2_5_vl":
        video["second_per_grid_ts"] = torch.tensor([tp / fps])
    if family == "qwen3_vl":
        video["frame_timestamps"] = [i / fps for i in range(frames)]
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


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; choose from {FAMILIES}")
