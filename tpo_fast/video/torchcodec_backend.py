"""torchcodec backend ("torchcodec"): PyTorch's own decoder, on the CPU (FFmpeg) or, for a CUDA
device, on that GPU's NVDEC (torchcodec's default CUDA backend, "nvdec", which reads the
stream FFmpeg demuxes and decodes it with libnvcuvid, frames staying on the GPU).

API (torchcodec >= 0.15, ``meta-pytorch/torchcodec`` ``src/torchcodec/decoders/
_video_decoder.py``): ``VideoDecoder(source, dimension_order="NHWC", num_ffmpeg_threads=N,
device="cpu" | "cuda:N", seek_mode="exact")``; ``get_frames_at(indices).data`` is uint8
[n, H, W, 3] RGB, frame ``i`` the ``i``-th in presentation order (``seek_mode="exact"`` scans
the file first), any order and repeats allowed, as ``decode`` asks.

torchcodec loads FFmpeg's shared libraries (majors 4-8, by their plain sonames:
``libavcodec.so.62`` ...) and, in the PyPI wheels, CUDA 13's ``libnvrtc.so.13`` and
``libcudart.so.13`` and a CUDA build of torch. Beside this project's CPU torch it does not
load (measured 2026-12, torchcodec 0.15.0: "libnvrtc.so.13: cannot open shared object file"),
and ``unavailable()`` says so; the GPU suite carries its wheel and compares its frames with
PyAV's there (README, "GPU suite"). "auto" never picks it (unmeasured against DALI / PyAV).
"""

from __future__ import annotations

import functools
import re

import torch

from tpo_fast.video.errors import VideoDecodeError

INSTALL_HINT = "pip install torchcodec (>= 0.15 for torch >= 2.11); it needs FFmpeg 4-8 libraries"


def load_error_reason(message: str) -> str:
    """The line of torchcodec's "Could not load libtorchcodec" message that says why: the
    first ``OSError`` that is not torch's own "Could not load this library" (the newest FFmpeg
    major's, tried first), else the message's first line."""
    for line in message.splitlines():
        found = re.match(r"\s*OSError: (.*)", line)
        if found and not found.group(1).startswith("Could not load this library"):
            return found.group(1).strip()
    return message.strip().splitlines()[0] if message.strip() else "unknown error"


@functools.cache
def torchcodec_unavailable() -> str | None:
    """None when ``torchcodec.decoders`` imports (and loads its libraries), else why not."""
    try:
        import torchcodec.decoders  # noqa: F401
    except ModuleNotFoundError:
        return f"torchcodec is not installed ({INSTALL_HINT})"
    except (ImportError, OSError, RuntimeError) as exc:
        return f"torchcodec does not load: {load_error_reason(str(exc))}"
    return None


def decode_torchcodec(infos, frame_indices, device: torch.device | None,
                      threads: int) -> list[torch.Tensor]:
    """Frames ``frame_indices[k]`` of ``infos[k]``: uint8 [n_k, H, W, 3] RGB each, on
    ``device`` when it is CUDA (NVDEC), else on the CPU with ``threads`` FFmpeg threads."""
    from torchcodec.decoders import VideoDecoder

    where = str(device) if device is not None and device.type == "cuda" else "cpu"
    out = []
    for info, idx in zip(infos, frame_indices):
        try:
            decoder = VideoDecoder(info.path, dimension_order="NHWC", num_ffmpeg_threads=threads,
                                   device=where, seek_mode="exact")
            frames = decoder.get_frames_at([int(i) for i in idx]).data
        except (RuntimeError, ValueError, OSError) as exc:
            raise VideoDecodeError(info.path, f"torchcodec: {exc}") from None
        if frames.shape[0] != len(idx):
            raise VideoDecodeError(info.path, f"torchcodec returned {frames.shape[0]} frames for "
                                              f"{len(idx)} indices")
        out.append(frames)
    return out
