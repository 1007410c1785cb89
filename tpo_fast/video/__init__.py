"""Video I/O for TPO: frame plans, the decoder registry ``DECODERS`` (PyAV, DALI CPU, DALI GPU,
frame folders, ...) and per-model preprocessing.

    info = probe("clip.mp4")                          # fps, frames, duration, codec, size
    plan = FramePlan.segment(info, 12.0, 20.0, 32)    # or uniform / complement / incomplete ...
    frames = decode(info, plan.indices)               # uint8 [32, H, W, 3]
    inputs = preprocess_video(frames, model.config, timestamps=plan.timestamps)
    inputs, plan = load_video_inputs("clip.mp4", model.config, num_frames=32)   # all of it
    info = probe(FrameVideo(folder="frames/clip", fps=2.0))   # a video given as image frames

DALI is imported only when a DALI backend runs; PyAV when a file is first probed.
"""

from tpo_fast.video.decoders import (
    DECODERS,
    Decoder,
    available_decoders,
    choose_backend,
    decode,
    decode_counts,
    decode_many,
    decoder_names,
    register,
    reset_decode_counts,
)
from tpo_fast.video.errors import VideoDecodeError
from tpo_fast.video.frame_folder import FrameVideo
from tpo_fast.video.info import VideoInfo, probe
from tpo_fast.video.loader import VideoLoader, load_video_inputs, resolve_plan
from tpo_fast.video.plans import FramePlan
from tpo_fast.video.preprocess import preprocess_video, supported_families
from tpo_fast.video.settings import DecodeSettings

__all__ = [
    "DECODERS", "DecodeSettings", "Decoder", "FramePlan", "FrameVideo", "VideoDecodeError",
    "VideoInfo", "VideoLoader", "available_decoders",
    "choose_backend", "decode", "decode_counts", "decode_many", "decoder_names",
    "load_video_inputs", "register",
    "preprocess_video", "probe", "reset_decode_counts", "resolve_plan", "supported_families",
]
