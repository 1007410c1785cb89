"""The model-adapter seam: everything family-specific about running a packed batch.

A Hugging Face video LLM is used unmodified. Its vision tower and projector run once per video
(through the model's own ``get_video_features``); the features reach the packed sequence through
the model's own ``mm_encoder_outputs`` argument, so the stock base-model forward scatters them
into the embeddings and runs the language model with the prefix-shared attention. An adapter
only knows the family's conventions: video-token counts, the prompt's video placeholder, the
position ids, which modules are the vision tower and the projector.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import torch
from torch import nn

Video = dict  # one video's model inputs, e.g. {"pixel_values_videos": ..., "video_grid_thw": ...}


class VideoLLMAdapter:
    """Base adapter; subclasses set the class attributes and override the hooks they need."""

    model_types: ClassVar[tuple[str, ...]] = ()
    video_placeholder: ClassVar[str] = "<video>"  # what the chat template writes for a video
    end_of_turn: ClassVar[str | None] = None  # token that ends an answer (None: the EOS token)
    video_keys: ClassVar[tuple[str, ...]] = ("pixel_values_videos",)

    def __init__(self, model: nn.Module):
        self.model = model

    # ---- structure -------------------------------------------------------------------------
    @property
    def base(self) -> nn.Module:
        """The model without its LM head (``<Family>Model``)."""
        return self.model.model

    @property
    def video_token_id(self) -> int:
        return int(self.model.config.video_token_id)

    def use_attention(self, name: str) -> None:
        """Switch the language model (only) to the attention implementation ``name``."""
        self.model.set_attn_implementation({"text_config": name})

    def decoder_hidden_states(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                              video_features, **attention_kwargs) -> torch.Tensor:
        """[1, T, H] final hidden states of the packed sequence: the stock base-model forward,
        given the precomputed video features and the packed-attention kwargs."""
        out = self.base(input_ids=input_ids, position_ids=position_ids,
                        mm_encoder_outputs={"video": video_features}, use_cache=False,
                        **attention_kwargs)
        return out.last_hidden_state

    def lm_head_weight(self) -> torch.Tensor:
        """[V, H] LM-head weight (tied or not)."""
        return self.model.get_output_embeddings().weight

    def vision_tower(self) -> nn.Module:
        raise NotImplementedError

    def projector_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def image_adapter(self) -> VideoLLMAdapter:
        """An adapter of the same interface for pairs whose prompts hold images (the model's
        own image path); families without one raise."""
        raise NotImplementedError(f"{type(self).__name__} has no image path for image pairs")

    # ---- video -----------------------------------------------------------------------------
    def preprocess(self, frames: torch.Tensor, **kwargs) -> Video:
        """Decoded uint8 frames [n, H, W, 3] -> this model's video inputs: the family's frame
        steps in the registry, with the settings of the folder the model was loaded from
        (``tpo_fast.video.preprocess_video``; keyword arguments as there)."""
        from tpo_fast.video.preprocess import preprocess_video

        return preprocess_video(frames, self.model.config, **kwargs)

    def check_video(self, video: Video, where: str = "video") -> None:
        missing = [k for k in self.video_keys if k not in video]
        if missing:
            raise ValueError(f"{where} lacks {missing} (a {type(self).__name__} video needs "
                             f"{list(self.video_keys)})")

    def num_video_tokens(self, video: Video) -> int:
        raise NotImplementedError

    def video_features(self, video: Video):
        """The model's ``get_video_features`` output for one video (vision tower + projector)."""
        raise NotImplementedError

    def batch_video_features(self, videos: list[Video]):
        """All of a micro-batch's videos (pair order) through the vision tower in one call,
        equal to ``merge_features([video_features(v) for v in videos])``. One call per
        micro-batch whatever its number of videos: under ZeRO-3 every rank must run the same
        modules the same number of times (parameter gathers are collectives). Families override
        this; the default (one call per video) is only safe without ZeRO-3."""
        return self.merge_features([self.video_features(v) for v in videos])

    # Sequence parallelism splits a micro-batch's frames over the SP group
    # (tpo_fast.sequence_parallel.encode_split): the units, one call over a subset of them (in
    # unit order: [rows, H]), and the features of the whole micro-batch from all units' rows.
    def frame_units(self, videos: list[Video]) -> list | None:
        """Independent pieces of the micro-batch's videos (frames, temporal patches) in token
        order, or None where the family's features cannot be computed piecewise."""
        return None

    def unit_features(self, units: list) -> torch.Tensor:
        raise NotImplementedError

    def assemble_features(self, rows: torch.Tensor, videos: list[Video]):
        raise NotImplementedError

    def merge_features(self, outputs: list):
        """Per-video feature outputs, in pair order -> ``mm_encoder_outputs["video"]``."""
        return SimpleNamespace(pooler_output=torch.cat([o.pooler_output for o in outputs], dim=1))

    # ---- prompt ----------------------------------------------------------------------------
    def video_token_ids(self, tokenizer, video: Video) -> list[int]:
        """What replaces the placeholder token: the video tokens, plus any family markup."""
        return [self.video_token_id] * self.num_video_tokens(video)

    def placeholder_id(self, tokenizer) -> int:
        """The token id the chat template writes for the video."""
        return tokenizer.convert_tokens_to_ids(self.video_placeholder)

    def prompt_ids(self, tokenizer, question: str, video: Video, system: str | None = None,
                   chat_template: str | None = None) -> list[int]:
        """Token ids of the chat prompt (generation prompt included) for a question about one
        video, with the placeholder expanded to the video's tokens."""
        if not question or not question.strip():
            raise ValueError("empty question")
        messages = []
        if system:
            messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
        messages.append({"role": "user", "content": [{"type": "video"},
                                                     {"type": "text", "text": question}]})
        if chat_template is None and not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "the tokenizer has no chat template: a model folder keeps it in the tokenizer "
                "(chat_template.jinja, tokenizer_config.json) or the processor "
                "(chat_template.json, processor_config.json); load the tokenizer with "
                "tpo_fast.models.folder.load_tokenizer to take the processor's")
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                             chat_template=chat_template)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        placeholder = self.placeholder_id(tokenizer)
        if ids.count(placeholder) != 1:
            raise ValueError(f"the rendered prompt holds {ids.count(placeholder)} video "
                             f"placeholders {tokenizer.convert_ids_to_tokens(placeholder)!r}; "
                             "expected exactly one")
        at = ids.index(placeholder)
        return ids[:at] + self.video_token_ids(tokenizer, video) + ids[at + 1:]

    def response_ids(self, tokenizer, text: str) -> list[int]:
        """Token ids of an answer, ending with the family's end-of-turn token."""
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] if text.strip() else []
        if not ids:
            raise ValueError("empty response")
        end = (tokenizer.convert_tokens_to_ids(self.end_of_turn) if self.end_of_turn
               else tokenizer.eos_token_id)
        return ids + [end]

    # ---- positions -------------------------------------------------------------------------
    def position_ids_fn(self, prompt_ids: list, videos: list):
        """A ``position_ids_fn`` for ``tpo_fast.packing`` (None: plain 1-D positions)."""
        return None

    def model_position_ids(self, position_ids: torch.Tensor) -> torch.Tensor:
        """Packed [T] or [D, T] positions -> the shape the base forward takes."""
        return position_ids[None]


def is_frozen(module: nn.Module) -> bool:
    return not any(p.requires_grad for p in module.parameters())


def as_index_list(ids) -> list[int]:
    if isinstance(ids, torch.Tensor):
        return ids.tolist()
    return np.asarray(ids).tolist()
