"""LongVA (LongVA-7B, LongVA-7B-DPO, LongVA-7B-TPO): a LLaVA-NeXT-format video LLM.

LongVA is not a transformers model family: it ships in the LLaVA-NeXT layout
(``LlavaQwenForCausalLM``; load/export in ``longva_checkpoint``). ``LongVAForCausalLM`` composes it
from transformers' own blocks: a ``CLIPVisionModel`` (ViT-L/14-336 in the released models), the
LLaVA MLP projector ``mm_projector`` (``nn.Sequential(Linear, GELU, Linear)`` for
``mlp2x_gelu``) and a Qwen2 causal LM (``Qwen2Model`` + ``lm_head``). ``LongVAAdapter`` runs it
through the packed prefix-shared path.

Video encoding, as LongVA does it (each point checked in the public files listed below):

* frames ``[F, 3, S, S]`` (S = 336: CLIP resize shortest side + centre crop, OpenAI CLIP
  mean/std, ``CLIP_MEAN``/``CLIP_STD``) go through the tower with all hidden states; features are
  ``hidden_states[mm_vision_select_layer]`` (-2: the output of the second-to-last layer;
  ``hidden_states[0]`` is the embeddings after ``pre_layrnorm``), and ``mm_vision_select_feature
  = "patch"`` drops the CLS token: ``[F, 576, 1024]`` (a 24x24 patch grid);
* the projector runs **before** pooling: ``[F, 576, H]``;
* ``get_2dPool``: the grid ``[F, 24, 24, H]`` is pooled with kernel = stride =
  ``mm_spatial_pool_stride`` (2), ``avg_pool2d`` for ``mm_spatial_pool_mode = "average"``
  (``max_pool2d`` for "max"), and flattened row-major: ``[F, 144, H]``;
* ``mm_patch_merge_type = "unires"`` (or "flat") flattens a video to ``[F * 144, H]``: frame by
  frame, **no newline tokens** (LongVA has no ``image_newline`` parameter unless the merge type
  contains "unpad", which is image-only and not supported here);
* the prompt holds one ``<image>`` placeholder, replaced by ``IMAGE_TOKEN_INDEX = -200`` in the
  token ids (``tokenizer_image_token``: the text on each side of ``<image>`` is tokenized
  separately); the features replace it; positions are plain ``0..T-1``;
* prompt template ``qwen_1_5`` (ChatML): ``<|im_start|>system\\nYou are a helpful
  assistant.<|im_end|>\\n<|im_start|>user\\n<image>\\n{question}<|im_end|>\\n<|im_start|>
  assistant\\n``; an answer ends with ``<|im_end|>``;
* ``LlavaQwenForCausalLM.__init__`` forces ``config.rope_scaling = None``; we do the same.

Public files checked (read, not copied):
  EvolvingLMMs-Lab/LongVA longva/longva/model/llava_arch.py (get_2dPool, encode_multimodals,
    the unires branch of prepare_inputs_labels_for_multimodal, image_newline only for "unpad"),
  EvolvingLMMs-Lab/LongVA longva/longva/model/multimodal_encoder/clip_encoder.py
    (feature_select: hidden_states[select_layer], "patch" drops CLS),
  EvolvingLMMs-Lab/LongVA longva/longva/model/language_model/llava_qwen.py (module layout
    model.{vision_tower.vision_tower, mm_projector, layers, ...} + lm_head; rope_scaling None),
  EvolvingLMMs-Lab/LongVA longva/longva/conversation.py (conv_qwen, "qwen_1_5"),
  EvolvingLMMs-Lab/LongVA longva/longva/mm_utils.py (tokenizer_image_token),
  EvolvingLMMs-Lab/LongVA local_demo/longva_backend.py and README.md (conv_template qwen_1_5,
    "<image>\\n" + question, pool stride 2 / "average", 32 frames for Video-MME),
  LLaVA-VL/LLaVA-NeXT llava/model/multimodal_projector/builder.py (mlp{N}x_gelu),
  ruili33/TPO longva/inference_longva.py (the same prompt for LongVA-7B-TPO),
  the lmms-lab/LongVA-7B config.json history on huggingface.co (mm_patch_merge_type "unires",
    mm_spatial_pool_mode "average", mm_spatial_pool_stride 2, mm_projector_type "mlp2x_gelu",
    mm_hidden_size 1024, mm_resampler_type null, architectures LlavaQwenForCausalLM),
  openai/clip-vit-large-patch14-336's config (ViT-L/14, 336 px, 24 layers, 16 heads, quick_gelu).

transformers is imported only when a model is built, so importing this module stays light.
"""

from __future__ import annotations

import copy
import re
import warnings
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from tpo_fast.models.base import Video
from tpo_fast.models.llava import _LlavaAdapter

IMAGE_TOKEN_INDEX = -200  # LongVA's id for the <image> placeholder (never embedded)
IMAGE_PLACEHOLDER = "<image>"
DEFAULT_SYSTEM = "You are a helpful assistant."
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP preprocessing
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CHECKPOINT_MODEL_TYPES = ("llava_qwen", "qwen2")  # LongVA-7B says qwen2; -DPO / -TPO llava_qwen

# Qwen2 fields of a LongVA config.json (rope_scaling is left out on purpose: LongVA drops it).
_TEXT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "hidden_act", "max_position_embeddings",
              "initializer_range", "rms_norm_eps", "rope_theta", "attention_dropout",
              "use_sliding_window", "sliding_window", "max_window_layers", "tie_word_embeddings",
              "bos_token_id", "eos_token_id", "pad_token_id")


class LongVAConfig:
    """A LongVA config: the checkpoint's ``config.json`` (``llava``, kept verbatim so an export
    writes it back unchanged), the CLIP tower's ``CLIPVisionConfig`` and the derived
    ``Qwen2Config`` (``text_config``). Raises ``ValueError`` for settings LongVA's video path does
    not have or this module does not implement."""

    model_type = "longva"  # the adapter registry key (not the checkpoint's model_type)

    def __init__(self, llava: dict, vision_config):
        from transformers import CLIPVisionConfig, Qwen2Config

        if isinstance(vision_config, dict):
            vision_config = CLIPVisionConfig(**vision_config)
        self.llava = copy.deepcopy(dict(llava))
        self.vision_config = vision_config
        missing = [k for k in ("mm_vision_tower", "mm_hidden_size", "mm_vision_select_layer",
                               "hidden_size", "vocab_size", "num_hidden_layers",
                               "num_attention_heads") if k not in llava]
        if missing:
            raise ValueError(f"not a LLaVA-NeXT (LongVA) config: it lacks {missing}")
        self.text_config = Qwen2Config(**{k: llava[k] for k in _TEXT_KEYS if k in llava})
        self.video_token_id = IMAGE_TOKEN_INDEX
        self.mm_vision_select_layer = int(llava["mm_vision_select_layer"])
        self.mm_vision_select_feature = llava.get("mm_vision_select_feature", "patch")
        self.mm_projector_type = llava.get("mm_projector_type", "linear")
        self.mm_patch_merge_type = llava.get("mm_patch_merge_type", "flat")
        # LongVA's demo and lmms-eval runs set 2 / "average" when a config lacks them.
        self.mm_spatial_pool_stride = int(llava.get("mm_spatial_pool_stride") or 2)
        self.mm_spatial_pool_mode = llava.get("mm_spatial_pool_mode") or "average"
        self._check(llava)

    def _check(self, llava: dict) -> None:
        vision = self.vision_config
        problems = []
        if self.mm_vision_select_feature != "patch":
            problems.append(f"mm_vision_select_feature {self.mm_vision_select_feature!r} (video "
                            "pooling needs 'patch': the CLS token dropped)")
        if not re.fullmatch(r"linear|mlp\d+x_gelu", self.mm_projector_type):
            problems.append(f"mm_projector_type {self.mm_projector_type!r} (supported: linear, "
                            "mlp<N>x_gelu)")
        if self.mm_patch_merge_type not in ("unires", "flat"):
            problems.append(f"mm_patch_merge_type {self.mm_patch_merge_type!r} (supported: "
                            "unires, flat)")
        if self.mm_spatial_pool_mode not in ("average", "max"):
            problems.append(f"mm_spatial_pool_mode {self.mm_spatial_pool_mode!r}")
        if llava.get("mm_resampler_type") not in (None, "identity"):
            problems.append(f"mm_resampler_type {llava['mm_resampler_type']!r}")
        if llava.get("mm_use_im_start_end"):
            problems.append("mm_use_im_start_end true")
        if int(llava["mm_hidden_size"]) != vision.hidden_size:
            problems.append(f"mm_hidden_size {llava['mm_hidden_size']} but the CLIP tower's "
                            f"hidden_size is {vision.hidden_size}")
        if not -vision.num_hidden_layers - 1 <= self.mm_vision_select_layer <= \
                vision.num_hidden_layers:
            problems.append(f"mm_vision_select_layer {self.mm_vision_select_layer} for a tower "
                            f"of {vision.num_hidden_layers} layers")
        if problems:
            raise ValueError("unsupported LongVA config: " + "; ".join(problems))
        if llava.get("use_pos_skipping"):
            warnings.warn("use_pos_skipping (random position shifts in training) is ignored",
                          stacklevel=3)

    def to_dict(self) -> dict:
        """The checkpoint's config.json (what peft and model cards read of a config)."""
        return copy.deepcopy(self.llava)

    @property
    def patches_per_side(self) -> int:
        return self.vision_config.image_size // self.vision_config.patch_size

    @property
    def tokens_per_frame(self) -> int:
        return (self.patches_per_side // self.mm_spatial_pool_stride) ** 2


def build_projector(config: LongVAConfig) -> nn.Module:
    """LLaVA's ``mm_projector``: ``linear`` or ``mlp<N>x_gelu`` (Linear, then N-1 x (GELU,
    Linear)); module indices match the checkpoint's ``model.mm_projector.<i>.*`` names."""
    mm_hidden, hidden = int(config.llava["mm_hidden_size"]), config.text_config.hidden_size
    if config.mm_projector_type == "linear":
        return nn.Linear(mm_hidden, hidden)
    depth = int(re.fullmatch(r"mlp(\d+)x_gelu", config.mm_projector_type).group(1))
    layers = [nn.Linear(mm_hidden, hidden)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(hidden, hidden)]
    return nn.Sequential(*layers)


class LongVAForCausalLM(nn.Module):
    """CLIP tower + ``mm_projector`` + Qwen2 + ``lm_head``; the plain (stock) forward.

    ``forward(input_ids [B, T] (video positions hold IMAGE_TOKEN_INDEX), pixel_values_videos
    [B, F, 3, S, S] (one video per row) or a list of [F, 3, S, S]) -> .logits [B, T, V]``.
    The packed path (``LongVAAdapter``) reuses ``get_video_features`` and ``embed``.
    """

    base_model_prefix = ""  # what transformers' (and peft's) module walks read on a model

    def __init__(self, config: LongVAConfig, attn_implementation: str = "sdpa"):
        from transformers import Qwen2Model

        super().__init__()
        self.config = copy.deepcopy(config)  # the sub-models keep (and may switch) their own
        self.vision_tower = self.vision_model_class()(self.config.vision_config)
        self.mm_projector = build_projector(self.config)
        self.language_model = Qwen2Model(self.config.text_config)
        text = self.config.text_config
        self.lm_head = nn.Linear(text.hidden_size, text.vocab_size, bias=False)
        if text.tie_word_embeddings:
            self.lm_head.weight = self.language_model.embed_tokens.weight
        self.vision_tower.set_attn_implementation(attn_implementation)
        self.language_model.set_attn_implementation(attn_implementation)

    @staticmethod
    def vision_model_class():
        from transformers import CLIPVisionModel

        return CLIPVisionModel

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.embed_tokens

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None) -> None:
        self.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs)

    def get_video_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """One video's frames [F, 3, S, S] -> [F * tokens_per_frame, H] (frame-major, each
        frame's pooled grid row-major), in the projector's dtype."""
        cfg = self.config
        out = self.vision_tower(pixel_values.to(self.vision_tower.dtype), output_hidden_states=True)
        features = out.hidden_states[cfg.mm_vision_select_layer][:, 1:]  # "patch": drop CLS
        features = self.mm_projector(features.to(next(self.mm_projector.parameters()).dtype))
        frames, _, hidden = features.shape
        side = cfg.patches_per_side
        grid = features.view(frames, side, side, hidden).permute(0, 3, 1, 2)
        pool = F.avg_pool2d if cfg.mm_spatial_pool_mode == "average" else F.max_pool2d
        grid = pool(grid, cfg.mm_spatial_pool_stride)
        return grid.permute(0, 2, 3, 1).reshape(-1, hidden)

    def embed(self, input_ids: torch.Tensor, video_features: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings [B, T, H] with the rows of ``video_features`` [N, H] scattered, in
        order, into the positions holding IMAGE_TOKEN_INDEX."""
        is_video = input_ids == self.config.video_token_id
        embeds = self.language_model.embed_tokens(input_ids.masked_fill(is_video, 0))
        found = int(is_video.sum())
        given = 0 if video_features is None else video_features.shape[0]
        if found != given:
            raise ValueError(f"the input holds {found} video tokens but the videos make {given}")
        if video_features is None:
            return embeds
        return embeds.masked_scatter(is_video[..., None].expand_as(embeds),
                                     video_features.to(embeds.dtype))

    def forward(self, input_ids: torch.Tensor, pixel_values_videos=None, attention_mask=None,
                position_ids=None, **kwargs):
        from transformers.modeling_outputs import CausalLMOutputWithPast

        features = None
        if pixel_values_videos is not None:
            features = torch.cat([self.get_video_features(v) for v in pixel_values_videos])
        out = self.language_model(inputs_embeds=self.embed(input_ids, features),
                                  attention_mask=attention_mask, position_ids=position_ids,
                                  **{"use_cache": False, **kwargs})
        return CausalLMOutputWithPast(logits=self.lm_head(out.last_hidden_state),
                                      past_key_values=out.past_key_values)


class LongVAAdapter(_LlavaAdapter):
    """Video input: ``{"pixel_values_videos": float [1, F, 3, S, S]}``; positions are 1-D.
    Video tokens are IMAGE_TOKEN_INDEX (-200) in the prompt, as LongVA writes them."""

    model_types = ("longva",)
    video_placeholder = IMAGE_PLACEHOLDER
    end_of_turn = "<|im_end|>"

    @property
    def base(self) -> nn.Module:
        return self.model.language_model

    def use_attention(self, name: str) -> None:
        self.model.language_model.set_attn_implementation(name)

    def decoder_hidden_states(self, input_ids, position_ids, video_features, **attention_kwargs):
        embeds = self.model.embed(input_ids, video_features.pooler_output[0])
        out = self.base(inputs_embeds=embeds, position_ids=position_ids, use_cache=False,
                        **attention_kwargs)
        return out.last_hidden_state

    def lm_head_weight(self) -> torch.Tensor:
        return self.model.lm_head.weight

    def vision_tower(self):
        return self.model.vision_tower

    def projector_parameters(self):
        return list(self.model.mm_projector.parameters())

    def num_video_tokens(self, video: Video) -> int:
        return video["pixel_values_videos"].shape[1] * self.model.config.tokens_per_frame

    def video_features(self, video: Video):
        return SimpleNamespace(
            pooler_output=self.model.get_video_features(video["pixel_values_videos"][0])[None])

    def batch_video_features(self, videos: list[Video]):
        frames = torch.cat([v["pixel_values_videos"][0] for v in videos])
        return SimpleNamespace(pooler_output=self.model.get_video_features(frames)[None])

    # sequence parallelism: frames are independent units (no per-video newline)
    def unit_features(self, units: list) -> torch.Tensor:
        out = self.model.get_video_features(torch.stack(units))
        return out.reshape(-1, out.shape[-1])

    def assemble_features(self, rows: torch.Tensor, videos: list[Video]):
        return SimpleNamespace(pooler_output=rows[None])

    def prompt_ids(self, tokenizer, question: str, video: Video, system: str | None = None,
                   chat_template: str | None = None) -> list[int]:
        """LongVA's ``qwen_1_5`` conversation with ``<image>\\n`` before the question; the text
        on each side of the placeholder is tokenized separately (``tokenizer_image_token``).
        ``system=""`` leaves out the system turn, as LongVA does."""
        if not question or not question.strip():
            raise ValueError("empty question")
        if chat_template is not None:
            raise ValueError("LongVA prompts use its qwen_1_5 conversation; chat_template is not "
                             "supported")
        if IMAGE_PLACEHOLDER in question:
            raise ValueError(f"the rendered prompt holds {question.count(IMAGE_PLACEHOLDER) + 1} "
                             f"video placeholders {IMAGE_PLACEHOLDER!r}; expected exactly one")
        system = DEFAULT_SYSTEM if system is None else system
        before = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
        before += "<|im_start|>user\n"
        after = f"\n{question}<|im_end|>\n<|im_start|>assistant\n"

        def ids(text):
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        return ids(before) + self.video_token_ids(tokenizer, video) + ids(after)
