"""The training set: validated pairs -> token ids and video inputs -> packed micro-batches.

``TPODataset`` tokenizes every pair once (so the packing planner knows exact lengths), probes
every video (a header read) and builds a packing-plan bin on demand: the bin's videos are
decoded on a small thread pool (``tpo_fast.video``), preprocessed into the model's video inputs
and packed by the family's ``PairPacker`` (``tpo_fast.data.packer``: token ids, video-token
checks, position ids).

Decoding follows the ``decode:`` section (``DecodeConfig`` -> ``DecodeSettings``): on a CUDA
machine by default DALI decodes on the model's own GPU and the frames are preprocessed there;
CPU-decoded frames travel as pinned uint8 and are normalised on the device. With the model on
CUDA the packed batch's CPU tensors are pinned too (in the building thread), so
``batch.to(device, non_blocking=True)`` does not block.

A pair that cannot be used (empty response, over-long tokenization, unreadable video) is an
error naming its file and line, or, with ``data.skip_invalid=true``, a counted skip.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from tpo_fast.data.packer import PairPacker
from tpo_fast.data.pairs import PairFileError, PairRecord
from tpo_fast.packing import PackedBatch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Tokens:
    question: str
    chosen: list[int]
    rejected: list[int]


def _frames_kwargs(record: PairRecord, data_cfg) -> dict:
    """The record's own frames (a count or indices), else ``data.frames``."""
    frames = record.frames if record.frames is not None else data_cfg.frames
    return {"frame_indices": frames} if isinstance(frames, list) else {"num_frames": frames}


def record_video_inputs(record: PairRecord, data_cfg, model_config, settings) -> dict:
    """A pair's video decoded per its frame plan (``_frames_kwargs``) with the ``DecodeSettings``
    ``settings`` and preprocessed for ``model_config`` (``data.min_pixels`` / ``max_pixels``)."""
    from tpo_fast.video import load_video_inputs

    video, _ = load_video_inputs(record.video, model_config, settings=settings,
                                 min_pixels=data_cfg.min_pixels, max_pixels=data_cfg.max_pixels,
                                 **_frames_kwargs(record, data_cfg))
    return video


class TPODataset:
    """Pairs ready for packing.

    Args:
        records: validated pairs (``read_pairs``); a pair's own ``system`` message (TRL)
            replaces ``data.system_prompt`` for it (with neither, the packer's own
            ``system_prompt``, None unless set).
        packer: the family's ``PairPacker`` (adapter + tokenizer): tokenises and packs.
        data_cfg: ``DataConfig`` (frames, system_prompt, skip_invalid, min/max_pixels, ...).
        decode: the ``decode:`` section (``DecodeConfig``; default: its defaults).
        device: where the model runs and batches go (``PreferenceModel.device``): decoding
            defaults to it (DALI on its GPU) and batches are pinned when it is CUDA.
    After construction ``skipped`` lists ``"file:line: reason"`` for every pair left out and
    ``decode`` holds the resolved ``DecodeSettings`` (explicit device).
    """

    def __init__(self, records: list[PairRecord], packer: PairPacker, data_cfg, decode=None, *,
                 device: torch.device | str):
        from tpo_fast.config import DecodeConfig
        from tpo_fast.video import DecodeSettings

        self.packer = packer
        self.model_config = packer.adapter.model.config
        self.cfg = data_cfg
        # Resolved here, in the constructing thread: workers get an explicit device index.
        decode = decode or DecodeConfig()
        self.decode = DecodeSettings.from_config(decode, model_device=device)
        self._pin = torch.device(device).type == "cuda"  # batches go to a GPU
        self.skipped: list[str] = []
        self._shape_videos: dict[tuple, dict] = {}
        self.records, self.tokens, prompt_lens = [], [], []
        from tpo_fast.video import VideoDecodeError

        for record in records:
            try:
                tokens = _Tokens(record.prompt, packer.response_ids(record.chosen),
                                 packer.response_ids(record.rejected))
                if tokens.chosen == tokens.rejected:
                    raise ValueError("chosen and rejected tokenize identically")
                prompt_len = self._prompt_len(record)
            except (ValueError, OSError, VideoDecodeError) as exc:
                self._problem(f"{record.source}: {exc}")
                continue
            self.records.append(record)
            self.tokens.append(tokens)
            prompt_lens.append(prompt_len)
        if self.skipped:
            log.warning("skipped %d pair(s); first: %s", len(self.skipped), self.skipped[0])
        if not self.records:
            raise PairFileError("no usable pairs left after validation; first problem: "
                                + (self.skipped[0] if self.skipped else "none"))
        self._lengths = (np.asarray(prompt_lens, np.int64),
                         np.asarray([len(t.chosen) for t in self.tokens], np.int64),
                         np.asarray([len(t.rejected) for t in self.tokens], np.int64))
        self._pool = ThreadPoolExecutor(max_workers=max(1, decode.workers),
                                        thread_name_prefix="tpo-decode")

    def __len__(self) -> int:
        return len(self.records)

    def _problem(self, message: str) -> None:
        if not self.cfg.skip_invalid:
            raise PairFileError(f"{message} (set data.skip_invalid=true to skip such pairs)")
        self.skipped.append(message)

    # ---- lengths -------------------------------------------------------------------------------
    def lengths(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(prompt, chosen, rejected) token counts per pair, for the packing planner."""
        return self._lengths

    @property
    def has_ref_logps(self) -> bool:
        return all(r.ref_logps is not None for r in self.records)

    def _frames_key(self, record: PairRecord) -> tuple:
        frames = record.frames if record.frames is not None else self.cfg.frames
        return (str(record.video), tuple(frames) if isinstance(frames, list) else frames)

    def _prompt_len(self, record: PairRecord) -> int:
        """Prompt tokens with the video placeholder expanded. The video-token count depends
        only on the plan's frame count and the video's size, so it is found with a shape-only
        (meta-device) preprocessing pass, cached per (video, frames)."""
        key = self._frames_key(record)
        if key not in self._shape_videos:
            self._shape_videos[key] = self._shape_only_video(record)
        video = self._shape_videos[key]
        return len(self.packer.prompt_ids(record.prompt, video, system=self._system(record)))

    def _system(self, record: PairRecord) -> str | None:
        return record.system or self.cfg.system_prompt

    def _shape_only_video(self, record: PairRecord) -> dict:
        from tpo_fast.video import preprocess_video, probe, resolve_plan
        from tpo_fast.video.loader import plan_sampling_fps

        info = probe(record.video)
        plan = resolve_plan(info, **_frames_kwargs(record, self.cfg))
        frames = torch.empty((len(plan.indices), info.height, info.width, 3), dtype=torch.uint8,
                             device="meta")
        return preprocess_video(frames, self.model_config, timestamps=plan.timestamps,
                                fps=plan_sampling_fps(plan, info.fps), duration=info.duration,
                                min_pixels=self.cfg.min_pixels, max_pixels=self.cfg.max_pixels)

    # ---- batches -------------------------------------------------------------------------------
    def video_inputs(self, i: int) -> dict:
        """Pair ``i``'s video decoded per its frame plan and preprocessed for the model."""
        return record_video_inputs(self.records[i], self.cfg, self.model_config, self.decode)

    def batch(self, pair_ids, is_padding: bool = False) -> PackedBatch:
        """The packed micro-batch of the given pairs (a packing-plan bin)."""
        pair_ids = [int(i) for i in pair_ids]
        videos = list(self._pool.map(self.video_inputs, pair_ids))
        prompts = [self.packer.prompt_ids(self.tokens[i].question, video,
                                          system=self._system(self.records[i]))
                   for i, video in zip(pair_ids, videos)]
        ref = None
        if self.has_ref_logps:
            ref = torch.tensor([self.records[i].ref_logps for i in pair_ids], dtype=torch.float32)
        batch = self.packer.pack(prompts, [self.tokens[i].chosen for i in pair_ids],
                                 [self.tokens[i].rejected for i in pair_ids], videos,
                                 ref_logps=ref, pair_ids=pair_ids, is_padding=is_padding)
        return batch.pin_memory() if self._pin else batch

    def describe(self, i: int) -> str:
        record = self.records[int(i)]
        return f"{record.source} ({record.video.name})"

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
