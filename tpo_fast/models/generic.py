"""The generic adapter: any transformers 5 video LLM through the interfaces its families share.

A video-capable ``<Family>ForConditionalGeneration`` in transformers 5 has a base model
(``model.model``) with

* ``get_video_features(pixel_values_videos, ...)`` — vision tower + projector, returning a
  ``BaseModelOutputWithPooling`` whose ``pooler_output`` the base forward scatters into the
  embeddings (extra fields, e.g. Qwen3-VL's ``deepstack_features``, ride along);
* ``forward(..., mm_encoder_outputs={"video": features})`` — precomputed features instead of
  pixels;
* ``get_placeholder_mask(input_ids, inputs_embeds, ...)`` — which token ids receive video
  features (not always ``config.video_token_id``: GLM-4.1V writes video frames as image tokens);
* for M-RoPE families, ``get_rope_index(input_ids, [mm_token_type_ids], video_grid_thw, ...)``.

``GenericVideoAdapter`` is built only on those: the video dict's keys are the parameter names of
the family's own ``get_video_features`` and ``get_rope_index`` (whatever its processor returns),
the video token is the one the placeholder mask flags, positions come from the model's own
rope index on each unpacked row, and the projector is what the base model holds besides the
vision tower and the language model. A model that lacks one of these gets an
``UnsupportedModelError`` naming what it lacks. Family adapters subclass it only for what is
really family-specific (the prompt markup around video tokens, a cheaper batching of frames).
"""

from __future__ import annotations

import inspect
import itertools
from types import SimpleNamespace

import torch
from torch import nn

from tpo_fast.models.base import Video, VideoLLMAdapter

# names under which families keep their modules (looked up on the base model, in this order)
_TOWER_NAMES = ("visual", "video_tower", "vision_tower", "vision_model", "vision_encoder", "vision")
_TOWER_PROJECTOR_NAMES = ("merger", "deepstack_merger_list")  # Qwen-VL keep the projector inside
# not the projector either: the LM, audio encoders, Video-LLaVA's image-only tower
_NOT_PROJECTOR = ("language_model", "audio_tower", "audio_model", "audio_encoder", "audio",
                  "image_tower")
# text-config layer types the prefix-shared attention implements
_ATTENTION_LAYER_TYPES = {"full_attention", "attention"}
_GRID_KEY = "video_grid_thw"


class UnsupportedModelError(ValueError):
    """The model cannot run the packed prefix-shared path; the message says what it lacks."""


def _parameters(fn) -> dict[str, inspect.Parameter]:
    return {name: p for name, p in inspect.signature(fn).parameters.items()
            if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _token_ids(config) -> dict[str, int]:
    """Every ``*_token_id`` / ``*_token_index`` integer of the top-level config."""
    out = {}
    for name in dir(config):
        if name.endswith(("_token_id", "_token_index")) and not name.startswith("_"):
            value = getattr(config, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                out[name] = value
    return out


class GenericVideoAdapter(VideoLLMAdapter):
    """A transformers 5 video LLM through its own feature, placeholder and rope-index hooks.

    Video input: ``{name: value}`` with the names of the family's ``get_video_features``
    parameters (its processor's output, e.g. ``pixel_values_videos`` and ``video_grid_thw``),
    plus any ``get_rope_index`` inputs (``second_per_grid_ts``, ...).
    """

    feature_fn = "get_video_features"  # the base model's vision tower + projector call
    modality = "video"  # the mm_encoder_outputs key (and placeholder mask) features go to
    grid_key = _GRID_KEY  # the input that holds a grid family's [t, h, w] rows

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self._check_fits()
        self._token_count_cache: dict = {}

    # ---- what the model must have ------------------------------------------------------------
    def _check_fits(self) -> None:
        name = type(self.model).__name__
        base = getattr(self.model, "model", None)
        if base is None or not isinstance(base, nn.Module):
            raise UnsupportedModelError(f"{name} has no base model (``.model``); expected a "
                                        "transformers <Family>ForConditionalGeneration")
        if not callable(getattr(base, self.feature_fn, None)):
            raise UnsupportedModelError(
                f"{name} ({self.model.config.model_type}) takes no {self.modality} input: its "
                f"base model {type(base).__name__} has no {self.feature_fn}")
        if "mm_encoder_outputs" not in inspect.signature(base.forward).parameters:
            raise UnsupportedModelError(
                f"{type(base).__name__}.forward takes no mm_encoder_outputs, so precomputed "
                f"{self.modality} features cannot be injected")
        if not callable(getattr(base, "get_placeholder_mask", None)):
            raise UnsupportedModelError(f"{type(base).__name__} has no get_placeholder_mask")
        if self.model.get_output_embeddings() is None:
            raise UnsupportedModelError(f"{name} has no LM head (get_output_embeddings)")
        self._find_tower()
        text = self.model.config.get_text_config()
        layer_types = set(getattr(text, "layer_types", None) or ())
        other = sorted(layer_types - _ATTENTION_LAYER_TYPES)
        if other:
            raise UnsupportedModelError(
                f"{name}'s language model has {other} layers; the prefix-shared forward shares "
                "the prompt through full attention's keys and values and implements no other "
                "token mixer (sliding windows, linear attention / recurrences)")
        if getattr(text, "use_sliding_window", False) and getattr(text, "sliding_window", None):
            raise UnsupportedModelError(f"{name} uses sliding-window attention "
                                        "(use_sliding_window), which the packed forward lacks")
        self._find_video_token()

    def _find_tower(self) -> nn.Module:
        for attr in _TOWER_NAMES:
            module = getattr(self.base, attr, None)
            if isinstance(module, nn.Module):
                return module
        raise UnsupportedModelError(f"{type(self.base).__name__} has no vision tower under any "
                                    f"of {list(_TOWER_NAMES)}")

    def _find_video_token(self) -> int:
        """The token id the model's own ``get_placeholder_mask`` fills with the features."""
        candidates = sorted(set(_token_ids(self.model.config).values()))
        embed = self.base.get_input_embeddings()
        if not candidates or embed is None:
            raise UnsupportedModelError(f"{type(self.model).__name__}'s config names no "
                                        "multimodal token ids")
        device, width = embed.weight.device, embed.embedding_dim
        index = 1 if self.modality == "video" else 0
        feature_arg = f"{self.modality}_features"
        takes_features = feature_arg in inspect.signature(self.base.get_placeholder_mask).parameters
        flagged = []
        for token in candidates:
            # one token: its mask is [[True]] iff the model fills it with this modality's
            # features (one token of features then passes the model's own count check)
            kwargs = {feature_arg: torch.zeros(1, 1, width, device=device)} if takes_features \
                else {}
            try:
                with torch.no_grad():
                    masks = self.base.get_placeholder_mask(
                        torch.tensor([[token]], device=device),
                        inputs_embeds=torch.zeros(1, 1, width, device=device), **kwargs)
            except Exception:  # the count check: this token takes no such features
                continue
            mask = masks[index] if isinstance(masks, (tuple, list)) else (
                masks if index == 0 else None)
            if mask is None:
                raise UnsupportedModelError(f"{type(self.base).__name__}.get_placeholder_mask "
                                            f"gives no {self.modality} mask")
            if bool(mask.reshape(-1)[0]):
                flagged.append(token)
        if len(flagged) != 1:
            raise UnsupportedModelError(
                f"{type(self.base).__name__}.get_placeholder_mask flags {len(flagged)} of the "
                f"config's token ids {candidates} as {self.modality} slots; expected exactly one")
        self._video_token = flagged[0]
        return flagged[0]

    # ---- structure -------------------------------------------------------------------------
    @property
    def video_token_id(self) -> int:
        return self._video_token

    @property
    def video_keys(self) -> tuple[str, ...]:
        """The inputs ``get_video_features`` cannot do without: its parameters without default
        that the config does not supply, and the grid (``*_grid_thw``: the features are split
        by it, though its signature defaults it to None)."""
        return tuple(n for n, p in _parameters(self._feature_call()).items()
                     if (p.default is inspect.Parameter.empty or n.endswith("grid_thw"))
                     and not hasattr(self.model.config, n))

    def vision_tower(self) -> nn.Module:
        return self._find_tower()

    def projector_parameters(self) -> list[nn.Parameter]:
        """What maps vision features into the language model: every base-model module that is
        neither the vision tower nor the language model (nor an audio tower), and the
        projector modules that some towers hold (Qwen-VL's ``merger``)."""
        tower, embeddings = self.vision_tower(), self.base.get_input_embeddings()
        params = []
        for name, child in self.base.named_children():
            if child is tower or name in _NOT_PROJECTOR or child is embeddings:
                continue
            params += list(child.parameters())
        params += list(self.base.parameters(recurse=False))
        for name in _TOWER_PROJECTOR_NAMES:
            module = getattr(tower, name, None)
            if isinstance(module, nn.Module):
                params += list(module.parameters())
        return params

    # ---- video -----------------------------------------------------------------------------
    def feature_kwargs(self, video: Video) -> dict:
        """``get_video_features`` keyword arguments for one video: its own entries, and config
        values for parameters named after config fields (``vision_feature_layer``, ...)."""
        kwargs = {}
        for name in _parameters(self._feature_call()):
            if name in video:
                kwargs[name] = video[name]
            elif hasattr(self.model.config, name):
                kwargs[name] = getattr(self.model.config, name)
        return kwargs

    def _feature_call(self):
        return getattr(self.base, self.feature_fn)

    def video_features(self, video: Video):
        dtype = next(self.vision_tower().parameters()).dtype
        kwargs = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v
                  for k, v in self.feature_kwargs(video).items()}
        return self._feature_call()(**kwargs, return_dict=True)

    def _batchable(self, videos: list[Video]) -> bool:
        """Videos whose tensors concatenate along dim 0 as the family's processor batches
        several videos: grid families (each video's rows plus one ``video_grid_thw`` row)."""
        return all(self.grid_key in v for v in videos)

    def batch_video_features(self, videos: list[Video]):
        """One ``get_video_features`` call for the micro-batch where the family batches videos
        by concatenation (grid families); otherwise one call per video (not ZeRO-3 safe: a
        family adapter should override this)."""
        if len(videos) > 1 and self._batchable(videos):
            keys = [k for k in self.feature_kwargs(videos[0]) if k in videos[0]]
            merged = {}
            for k in keys:
                values = [v[k] for v in videos]
                if all(torch.is_tensor(x) for x in values):
                    merged[k] = torch.cat([x if x.dim() else x.reshape(1) for x in values])
                elif all(x == values[0] for x in values):
                    merged[k] = values[0]
                else:
                    return super().batch_video_features(videos)
            return self.video_features(merged)
        return super().batch_video_features(videos)

    def merge_features(self, outputs: list):
        """Per-video (or per-call) feature outputs, in pair order -> one output as the base
        forward takes it: tuples (one entry per video) are chained, [1, tokens, H] tensors
        joined along the tokens, other tensors along their first axis, lists (per layer)
        merged entry by entry."""
        first = outputs[0]
        fields = {}
        for name in _feature_fields(first):
            fields[name] = _merge([getattr(o, name) for o in outputs], name)
        return SimpleNamespace(**fields)

    def num_video_tokens(self, video: Video) -> int:
        """Grid families: ``prod(video_grid_thw) / merge²`` (the split ``get_video_features``
        makes); others: the row count of the features, computed once per input signature."""
        if self.grid_key in video:
            vision = self.model.config.vision_config
            merge = getattr(vision, "spatial_merge_size", None)
            if "video_merge_sizes" in video:  # VideoLLaMA3: a merge size per video
                merge = int(torch.as_tensor(video["video_merge_sizes"]).reshape(-1)[0])
            if merge is not None:
                grid = self._grid(video)
                return int(grid.prod(-1).sum()) // (merge * merge) // getattr(
                    vision, "temporal_merge_size", 1)
        return self._measured_token_count(video)

    def _grid(self, video: Video) -> torch.Tensor:
        return torch.as_tensor(video[self.grid_key]).reshape(-1, 3).long()

    def _measured_token_count(self, video: Video) -> int:
        key = tuple(sorted((k, tuple(v.shape) if torch.is_tensor(v) else repr(v))
                           for k, v in video.items()))
        if key not in self._token_count_cache:
            if any(hasattr(p, "ds_id") for p in self.vision_tower().parameters()):
                raise RuntimeError(
                    f"{type(self).__name__} counts a video's tokens by running the vision tower, "
                    "which a ZeRO-3 partitioned model cannot do outside the training step; "
                    "give the family adapter a num_video_tokens formula")
            with torch.no_grad():
                out = self.video_features(video)
            self._token_count_cache[key] = _rows(out.pooler_output)
        return self._token_count_cache[key]

    # ---- prompt ----------------------------------------------------------------------------
    def placeholder_id(self, tokenizer) -> int:
        """The token the chat template writes for a video: the config's ``video_token_id``."""
        config = self.model.config
        for name in ("video_token_id", "video_token_index"):
            if isinstance(getattr(config, name, None), int):
                return getattr(config, name)
        return self.video_token_id

    # ---- positions -------------------------------------------------------------------------
    def token_types(self, ids: list[int]) -> list[int]:
        """``mm_token_type_ids`` of a row: 2 at video slots (1 where the video is read as
        images), 0 elsewhere (text)."""
        slot, kind = self.video_token_id, 2 if self.modality == "video" else 1
        return [kind if t == slot else 0 for t in ids]

    def _filler_id(self) -> int:
        """A text token for rows' response positions (their ids do not change positions)."""
        taken = set(_token_ids(self.model.config).values())
        return next(t for t in itertools.count() if t not in taken)

    def rope_kwargs(self, video: Video) -> dict:
        params = _parameters(self.base.get_rope_index)
        return {k: v for k, v in video.items() if k in params and k not in
                ("input_ids", "mm_token_type_ids", "attention_mask")}

    def position_ids_fn(self, prompt_ids, videos):
        if not callable(getattr(self.base, "get_rope_index", None)):
            return None
        params = _parameters(self.base.get_rope_index)
        filler = self._filler_id()

        def positions(i: int, prompt_len: int, response_len: int):
            ids = list(prompt_ids[i]) + [filler] * response_len
            # on the CPU, beside the row's ids (packing runs there; videos may be on a GPU)
            kwargs = {k: v.cpu() if torch.is_tensor(v) else v
                      for k, v in self.rope_kwargs(videos[i]).items()}
            if "mm_token_type_ids" in params:
                kwargs["mm_token_type_ids"] = torch.tensor([self.token_types(ids)])
            if "attention_mask" in params:  # an unpadded row (Qwen3-Omni requires the mask)
                kwargs["attention_mask"] = torch.ones(1, len(ids), dtype=torch.long)
            out = self.base.get_rope_index(torch.tensor([ids]), **kwargs)
            pos = (out[0] if isinstance(out, tuple) else out)[:, 0].cpu()
            if pos.is_floating_point():
                if not torch.equal(pos, pos.round()):
                    raise UnsupportedModelError(
                        f"{type(self.base).__name__}.get_rope_index gives fractional positions; "
                        "packed batches carry integer positions")
                pos = pos.long()
            return pos.numpy()

        return positions

    def model_position_ids(self, position_ids: torch.Tensor) -> torch.Tensor:
        return position_ids[:, None, :] if position_ids.dim() == 2 else position_ids[None]

    def decoder_hidden_states(self, input_ids, position_ids, video_features, **attention_kwargs):
        """The stock base forward, the features injected through ``mm_encoder_outputs``."""
        extra = {}
        if "mm_token_type_ids" in inspect.signature(self.base.forward).parameters:
            # some families route tokens by modality (e.g. ERNIE-4.5-VL's experts)
            kind = 2 if self.modality == "video" else 1
            extra["mm_token_type_ids"] = (input_ids == self.video_token_id).long() * kind
        out = self.base(input_ids=input_ids, position_ids=position_ids,
                        mm_encoder_outputs={self.modality: video_features}, use_cache=False,
                        **extra, **attention_kwargs)
        return out.last_hidden_state

    def image_adapter(self) -> GenericImageAdapter:
        """This model's own image path (``get_image_features``, the image token, the rope
        index's image grid) behind the same interface: a pair whose prompt holds images packs
        and runs with it exactly as a video pair does with this adapter."""
        return GenericImageAdapter(self.model)

    def stock_inputs(self, video: Video) -> dict:
        """The stock forward's keyword arguments for this video (the processor's output)."""
        return {k: v for k, v in video.items() if k != "frame_timestamps"}


class GenericImageAdapter(GenericVideoAdapter):
    """A pair's images through the model's image path: the "video" dict of the packing and
    forward interface holds what the family's image processor returns for the pair's images
    (Qwen-VL: ``pixel_values`` [patches, D] and ``image_grid_thw`` [images, 3]; several images
    of one prompt are rows of both, in prompt order). The features go to
    ``mm_encoder_outputs["image"]``, the image token takes them, ``mm_token_type_ids`` is 1 there.
    """

    feature_fn = "get_image_features"
    modality = "image"
    grid_key = "image_grid_thw"

    def check_video(self, video: Video, where: str = "images") -> None:
        super().check_video(video, where)
        pixels = video.get("pixel_values")
        if self.grid_key in video and torch.is_tensor(pixels) and pixels.dim() == 2:
            patches = int(self._grid(video).prod(-1).sum())
            if pixels.shape[0] != patches:
                raise ValueError(f"{where}: {self.grid_key} {self._grid(video).tolist()} means "
                                 f"{patches} patches, pixel_values has {pixels.shape[0]}")

    def image_adapter(self) -> GenericImageAdapter:
        return self


def _feature_fields(output) -> list[str]:
    if hasattr(output, "keys"):
        names = list(output.keys())
    else:
        names = list(vars(output))
    return [n for n in names if n not in ("last_hidden_state", "hidden_states", "attentions")
            and getattr(output, n, None) is not None]


def _merge(values: list, name: str):
    first = values[0]
    if isinstance(first, tuple):
        return tuple(itertools.chain.from_iterable(values))
    if torch.is_tensor(first):
        if all(v.dim() == 3 and v.shape[0] == 1 for v in values):
            return torch.cat(values, dim=1)  # [1, tokens, H]: one video's rows each
        return torch.cat(values, dim=0)
    if isinstance(first, list):
        return [_merge([v[i] for v in values], name) for i in range(len(first))]
    raise TypeError(f"cannot merge feature field {name!r} of type {type(first).__name__}")


def _rows(pooler_output) -> int:
    if isinstance(pooler_output, (tuple, list)):
        return sum(_rows(p) for p in pooler_output)
    return pooler_output.reshape(-1, pooler_output.shape[-1]).shape[0]
