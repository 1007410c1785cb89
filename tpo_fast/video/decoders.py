"""``DECODERS``: the decoder registry, and ``decode``: exactly the asked frames of a video.

A decoder backend is one ``Decoder`` entry: its name, how it decodes videos into frames, where
it decodes (``devices``), which codecs it reads, whether it is usable here (and why not), when
``"auto"`` picks it and which settings it reads. Adding a decoder is one entry here (and its
module); the ``decode:`` config section of train, curate and eval accepts every registered
name (``decoder_names()``).

Entries: ``"pyav"`` (any codec FFmpeg decodes; CPU; seeking; threaded), ``"dali_cpu"``
(VP8/VP9/MJPEG, DALI's CPU decoder), ``"dali_gpu"`` (NVDEC on the target GPU), ``"torchcodec"``
(PyTorch's decoder; NVDEC for a CUDA device; ``torchcodec_backend.py``) and the source
``"frames"`` (a video given as image frames, ``frame_folder.py``: read with Pillow whatever the
backend). ``"auto"`` tries the entries in registry order and takes the first whose ``auto``
rule accepts the video and target device: a CUDA ``device`` with DALI importable and a codec
NVDEC decodes -> dali_gpu; otherwise pyav (on a CPU, PyAV measured about 2x faster than DALI's
CPU decoder: benchmarks/results/video-*.json). When DALI does not import, "auto" uses PyAV and
logs one warning.

Frames decoded on the CPU for a CUDA ``device`` are pinned and copied without blocking, so a
decoding thread hands the GPU uint8 frames and the model's preprocessing runs there.
``decode_counts()`` counts the decodes per entry that produced them (and PyAV fallbacks).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from tpo_fast.video.dali_backend import (
    DALI_CPU_CODECS,
    DALI_GPU_CODECS,
    dali_available,
    decode_dali,
)
from tpo_fast.video.errors import VideoDecodeError
from tpo_fast.video.frame_folder import FRAME_CODEC, decode_frames
from tpo_fast.video.info import VideoInfo, probe
from tpo_fast.video.pyav_backend import _check_indices, decode_pyav
from tpo_fast.video.settings import DEFAULT_THREADS, resolve_device
from tpo_fast.video.torchcodec_backend import decode_torchcodec, torchcodec_unavailable

logger = logging.getLogger(__name__)
_warned_no_dali = False
_counts: Counter = Counter()
_counts_lock = threading.Lock()

# decode(infos, frame_indices, device, threads) -> one uint8 [n_k, H, W, 3] tensor per video
DecodeFn = Callable[[Sequence[VideoInfo], Sequence[Sequence[int]], "torch.device | None", int],
                    list]


@dataclass(frozen=True)
class Decoder:
    """One decoder backend.

    ``decode(infos, frame_indices, device, threads)``: frames ``frame_indices[k]`` of video
    ``infos[k]``, one uint8 [n_k, H, W, 3] RGB tensor per video, on the CPU or (a GPU decoder)
    on ``device``; raises ``VideoDecodeError`` naming the file it cannot read. ``devices``:
    where it decodes ("cpu", "cuda"). ``codecs``: FFmpeg codec names it reads (None: whatever
    FFmpeg reads). ``unavailable()``: None when usable here, else why not (checked before it
    decodes). ``auto(info, device)``: whether ``"auto"`` picks it (entries tried in registry
    order). ``source``: it reads its own kind of video (``codecs``) whatever backend is set.
    ``batched``: one call decodes many videos faster than one call each. ``options``: the
    ``decode:`` settings it reads besides the device.
    """

    name: str
    decode: DecodeFn
    devices: tuple[str, ...] = ("cpu",)
    codecs: frozenset[str] | None = None
    unavailable: Callable[[], str | None] = lambda: None
    auto: Callable[[VideoInfo, torch.device | None], bool] | None = None
    source: bool = False
    batched: bool = False
    options: tuple[str, ...] = ()
    doc: str = ""

    def why_not(self, info: VideoInfo, device: torch.device | None) -> tuple[type, str] | None:
        """Why this entry cannot decode ``info`` for ``device`` (error type, reason), or None."""
        reason = self.unavailable()
        if reason is not None:
            return RuntimeError, f"video backend {self.name!r} is unavailable: {reason}"
        if "cpu" not in self.devices and not torch.cuda.is_available():
            return RuntimeError, f"backend {self.name!r} needs a CUDA device"
        if self.codecs is not None and info.codec not in self.codecs:
            return VideoDecodeError, (f"codec {info.codec!r} is not supported by "
                                      f"{self.doc or self.name} ({sorted(self.codecs)}); use pyav")
        return None


DECODERS: dict[str, Decoder] = {}


def register(decoder: Decoder) -> Decoder:
    """Add ``decoder`` to ``DECODERS`` (a name may be registered once)."""
    if decoder.name in DECODERS or decoder.name == "auto":
        raise ValueError(f"decoder {decoder.name!r} is already registered")
    DECODERS[decoder.name] = decoder
    return decoder


def decoder_names() -> tuple[str, ...]:
    """The values ``decode.backend`` accepts: ``"auto"`` and every non-source entry."""
    return ("auto", *(n for n, d in DECODERS.items() if not d.source))


def available_decoders() -> dict[str, str | None]:
    """Every entry: None when usable on this machine, else why not."""
    out = {}
    for name, d in DECODERS.items():
        out[name] = d.unavailable()
        if out[name] is None and "cpu" not in d.devices and not torch.cuda.is_available():
            out[name] = "needs a CUDA device (none here)"
    return out


# ---- the entries -------------------------------------------------------------------------------

def _is_cuda(device: torch.device | str | None) -> bool:
    return device is not None and torch.device(device).type == "cuda"


def _dali_or_warn() -> bool:
    global _warned_no_dali
    if dali_available():
        return True
    if not _warned_no_dali:
        logger.warning("nvidia.dali does not import: decoding with PyAV instead")
        _warned_no_dali = True
    return False


def _decode_pyav(infos, frame_indices, device, threads) -> list[torch.Tensor]:
    return [torch.from_numpy(decode_pyav(i.path, idx, threads=threads))
            for i, idx in zip(infos, frame_indices)]


def _dali(gpu: bool) -> DecodeFn:
    def run(infos, frame_indices, device, threads) -> list[torch.Tensor]:
        out = decode_dali([i.path for i in infos], frame_indices, gpu=gpu, device=device,
                          num_threads=threads or DEFAULT_THREADS)
        for info, idx, frames in zip(infos, frame_indices, out):
            if frames.shape[0] != len(idx):
                raise VideoDecodeError(info.path, f"DALI returned {frames.shape[0]} frames for "
                                                  f"{len(idx)} indices")
        return out
    return run


def _no_dali() -> str | None:
    return None if dali_available() else "nvidia.dali does not import (pip install " \
                                         "nvidia-dali-cuda130)"


def _decode_frames(infos, frame_indices, device, threads) -> list[torch.Tensor]:
    return [decode_frames(i, idx) for i, idx in zip(infos, frame_indices)]


register(Decoder("frames", _decode_frames, codecs=frozenset({FRAME_CODEC}), source=True,
                 doc="the frame-folder reader (Pillow)"))
register(Decoder(
    "dali_gpu", _dali(gpu=True), devices=("cuda",), codecs=DALI_GPU_CODECS, unavailable=_no_dali,
    auto=lambda info, device: (_is_cuda(device) and torch.cuda.is_available()
                               and info.codec in DALI_GPU_CODECS and _dali_or_warn()),
    batched=True, options=("threads",), doc="NVDEC through DALI"))
register(Decoder("dali_cpu", _dali(gpu=False), codecs=DALI_CPU_CODECS, unavailable=_no_dali,
                 batched=True, options=("threads",), doc="DALI's CPU decoder"))
register(Decoder("torchcodec", decode_torchcodec, devices=("cpu", "cuda"),
                 unavailable=torchcodec_unavailable, options=("threads",),
                 doc="torchcodec (FFmpeg; NVDEC for a CUDA device)"))
register(Decoder("pyav", _decode_pyav, auto=lambda info, device: True, options=("threads",),
                 doc="PyAV (FFmpeg)"))
FALLBACK = "pyav"  # decodes what another entry cannot read (decode(fallback=True))


# ---- dispatch ----------------------------------------------------------------------------------

def decode_counts() -> Counter:
    """A copy of the decode counters: videos decoded per entry ("pyav", "dali_cpu", "dali_gpu",
    "frames", ...) and "fallback" (an entry could not read the file; PyAV decoded it)."""
    with _counts_lock:
        return Counter(_counts)


def reset_decode_counts() -> None:
    with _counts_lock:
        _counts.clear()


def _count(key: str, n: int = 1) -> None:
    with _counts_lock:
        _counts[key] += n


def choose_backend(info: VideoInfo, device: torch.device | str | None = None) -> str:
    """The entry ``"auto"`` picks for this video and target device: the first (registry
    order) whose ``auto`` rule accepts them; e.g. DALI on the GPU for a CUDA target (codecs
    NVDEC decodes), else PyAV."""
    for name, d in DECODERS.items():
        if d.auto is not None and d.auto(info, device):
            return name
    return FALLBACK


def to_device(frames: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    """``frames`` on ``device``: CPU uint8 frames for a GPU are pinned (in the calling, i.e.
    decoding, thread) and copied without blocking."""
    if device is None or frames.device == torch.device(device):
        return frames
    if _is_cuda(device) and frames.device.type == "cpu":
        return frames.pin_memory().to(device, non_blocking=True)
    return frames.to(device)


def _info(source) -> VideoInfo:
    return source if isinstance(source, VideoInfo) else probe(source)


def _resolve(backend: str, info: VideoInfo, device) -> Decoder:
    """The entry that decodes ``info``: a source entry claiming its codec, else ``backend``
    (``"auto"``: ``choose_backend``), checked against the video and this machine."""
    for d in DECODERS.values():
        if d.source and info.codec in d.codecs:
            return d
    if backend not in decoder_names():
        raise ValueError(f"unknown backend {backend!r}; choose from {decoder_names()}")
    d = DECODERS[choose_backend(info, device) if backend == "auto" else backend]
    problem = d.why_not(info, device)
    if problem is not None:
        error, reason = problem
        raise VideoDecodeError(info.path, reason) if error is VideoDecodeError else error(reason)
    return d


def _explicit(device) -> torch.device | None:
    """``device`` with an explicit CUDA index (this thread's current device for "cuda")."""
    return None if device is None else resolve_device(device)


def _fall_back(info: VideoInfo, frame_indices, backend: str, error: VideoDecodeError,
               threads: int) -> torch.Tensor:
    _count("fallback")
    logger.warning("%s cannot decode %s (%s): decoding it with PyAV (%d fallbacks so far)",
                   backend, info.path, error.reason, decode_counts()["fallback"])
    (frames,) = DECODERS[FALLBACK].decode([info], [frame_indices], None, threads)
    _count(FALLBACK)
    return frames


def decode(source: str | os.PathLike | VideoInfo, frame_indices: Sequence[int], *,
           backend: str = "auto", device: torch.device | str | None = None,
           threads: int = DEFAULT_THREADS, fallback: bool = False) -> torch.Tensor:
    """Frames ``frame_indices`` (presentation order, 0-based; any order, duplicates allowed)
    of a video as uint8 [n, H, W, 3] RGB, on ``device`` (CPU when None).

    ``backend``: a ``DECODERS`` name or "auto". ``threads`` sets the decoder's CPU threads
    (PyAV: FFmpeg's, 0 = every core; DALI's CPU threads). With ``fallback``, a file another
    entry cannot decode (its codec, or the file) is decoded with PyAV instead, counted in
    ``decode_counts()["fallback"]`` with a warning. Raises ``ValueError`` for indices outside
    the video or an unknown backend, ``RuntimeError`` for an entry unusable here, and
    ``VideoDecodeError`` (naming the file) for anything the file itself causes."""
    info = _info(source)
    _check_indices(info, frame_indices)
    device = _explicit(device)
    chosen = None
    try:
        chosen = _resolve(backend, info, device)
        (frames,) = chosen.decode([info], [frame_indices], device, threads)
        _count(chosen.name)
    except VideoDecodeError as e:
        if not fallback or (chosen is not None and (chosen.name == FALLBACK or chosen.source)):
            raise
        frames = _fall_back(info, frame_indices, chosen.doc if chosen else backend, e, threads)
    return to_device(frames, device)


def decode_many(sources: Sequence[str | os.PathLike | VideoInfo],
                frame_indices: Sequence[Sequence[int]], *, backend: str = "auto",
                device: torch.device | str | None = None, threads: int = DEFAULT_THREADS,
                fallback: bool = False) -> list[torch.Tensor]:
    """``decode`` for many videos: when every video resolves to the same batched entry (the
    DALI ones) they decode in batched calls; otherwise one after another."""
    if len(sources) != len(frame_indices):
        raise ValueError(f"{len(sources)} sources but {len(frame_indices)} index lists")
    infos = [_info(s) for s in sources]
    for info, idx in zip(infos, frame_indices):
        _check_indices(info, idx)
    device = _explicit(device)
    if not fallback:
        chosen = {_resolve(backend, info, device).name for info in infos}
        if len(chosen) == 1 and DECODERS[next(iter(chosen))].batched:
            d = DECODERS[next(iter(chosen))]
            out = d.decode(infos, frame_indices, device, threads)
            _count(d.name, len(out))
            return [to_device(o, device) for o in out]
    return [decode(i, idx, backend=backend, device=device, threads=threads, fallback=fallback)
            for i, idx in zip(infos, frame_indices)]
