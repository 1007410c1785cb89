"""Video decoding benchmark: frames/s of TPO's 32-frame plans from 1-minute 720p videos.

    python -m benchmarks.video                 # CPU: PyAV (H.264, VP9) vs DALI CPU (VP9)
    python -m benchmarks.video --smoke         # tiny videos, seconds; CI runs this
    python -m benchmarks.video --gpu           # with CUDA: DALI GPU (NVDEC) vs PyAV, 16 threads,
                                               # decoding + preprocessing (unvalidated here)

Test videos are synthetic (``tpo_fast.synthetic.videos``: every frame shows its index over a
moving texture) and written once with PyAV into ``--cache-dir``: H.264 (B-frames) in .mp4 and VP9
(realtime, cpu-used 8) in .webm, a keyframe every 2 s. Plans: ``uniform(32)``, ``segment`` and
``complement`` of the 20-40 % window, ``incomplete`` of it, ``downsample(32, 2)``. Each measured
decode is checked to return exactly the planned frames. GPU targets (issue 5): DALI GPU >= 10x
PyAV's frames/s per process, and >= 20 pairs/s at 32 frames.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

from benchmarks.harness import timed, write_result
from tpo_fast.synthetic.videos import frame_number, write_index_video
from tpo_fast.video import (
    FramePlan,
    available_decoders,
    decode,
    decode_many,
    preprocess_video,
    probe,
)
from tpo_fast.video.dali_backend import dali_available

FULL = dict(seconds=60, width=1280, height=720, fps=30, frames=32, reps=5)
SMOKE = dict(seconds=2, width=160, height=96, fps=10, frames=8, reps=1)


def make_videos(cache: Path, seconds: int, width: int, height: int, fps: int) -> dict[str, str]:
    """The cached benchmark videos {"h264": path, "vp9": path}, written when missing."""
    cache.mkdir(parents=True, exist_ok=True)
    out = {}
    for codec, ext in (("h264", "mp4"), ("vp9", "webm")):
        path = cache / f"index_{width}x{height}_{fps}fps_{seconds}s_{codec}.{ext}"
        if not path.exists():
            tmp = path.with_suffix(f".partial.{ext}")
            write_index_video(tmp, seconds * fps, width=width, height=height, fps=fps,
                              codec=codec, gop=2 * fps, texture=True)
            os.replace(tmp, path)
        out[codec] = str(path)
    return out


def make_plans(info, n: int) -> dict[str, FramePlan]:
    t0, t1 = 0.2 * info.duration, 0.4 * info.duration
    return {"uniform": FramePlan.uniform(info, n), "segment": FramePlan.segment(info, t0, t1, n),
            "complement": FramePlan.complement(info, t0, t1, n),
            "incomplete": FramePlan.incomplete(info, t0, t1, n, seed=0),
            "downsample": FramePlan.downsample(info, n, 2)}


def _check(frames: torch.Tensor, plan: FramePlan, label: str) -> None:
    got = [frame_number(f) for f in frames.cpu()]
    if got != list(plan.indices):
        raise AssertionError(f"{label}: decoded frames {got} != planned {list(plan.indices)}")


def bench_decode(path: str, backend: str, plans: dict, reps: int, threads: int = 0,
                 device: str | None = None) -> dict:
    info, rows = probe(path), {}
    for name, plan in plans.items():
        _check(decode(info, plan.indices, backend=backend, threads=threads, device=device),
               plan, f"{backend} {name}")
        t = timed(lambda plan=plan: decode(info, plan.indices, backend=backend, threads=threads,
                                           device=device), reps=reps, warmup=0)
        rows[name] = {"frames": len(plan), "frames_per_s": len(plan) / t["median_s"], **t}
    return rows


def run_cpu(videos: dict, n: int, reps: int) -> dict:
    results = {}
    for codec in ("h264", "vp9"):
        plans = make_plans(probe(videos[codec]), n)
        results[f"pyav/{codec}"] = bench_decode(videos[codec], "pyav", plans, reps)
        if codec == "vp9" and dali_available():
            results["dali_cpu/vp9"] = bench_decode(videos[codec], "dali_cpu", plans, reps)
    return results


def run_gpu(videos: dict, n: int, reps: int, batch: int) -> dict:
    """DALI GPU vs PyAV (16 threads), decoding + OneVision preprocessing (384 px) on the GPU;
    torchcodec's NVDEC decoding beside them when it loads. Unvalidated on hardware."""
    from types import SimpleNamespace

    cfg = SimpleNamespace(model_type="llava_onevision", vision_config=SimpleNamespace(
        image_size=384))
    results = {}
    for codec in ("h264", "vp9"):
        path = videos[codec]
        info = probe(path)
        plans = make_plans(info, n)
        row = {"pyav16_decode": bench_decode(path, "pyav", plans, reps, threads=16),
               "dali_gpu_decode": bench_decode(path, "dali_gpu", plans, reps, device="cuda")}
        why_not = available_decoders()["torchcodec"]
        row["torchcodec_cuda_decode"] = (
            bench_decode(path, "torchcodec", plans, reps, device="cuda") if why_not is None
            else {"skipped": why_not})
        plan = plans["uniform"]

        def pyav_pair(plan=plan, info=info):  # as the data path: pinned uint8, non-blocking
            frames = decode(info, plan.indices, backend="pyav", threads=16, device="cuda")
            return preprocess_video(frames, cfg)

        def dali_batch(plan=plan, path=path):
            out = decode_many([path] * batch, [plan.indices] * batch, backend="dali_gpu",
                              device="cuda")
            return [preprocess_video(f, cfg) for f in out]

        t_pyav = timed(pyav_pair, reps=reps)
        t_dali = timed(dali_batch, reps=reps)
        row["pyav16_decode_preprocess"] = {"pairs_per_s": 1 / t_pyav["median_s"], **t_pyav}
        row["dali_gpu_batch_decode_preprocess"] = {
            "batch": batch, "pairs_per_s": batch / t_dali["median_s"], **t_dali}
        row["speedup_pairs_per_s"] = (row["dali_gpu_batch_decode_preprocess"]["pairs_per_s"]
                                      / row["pyav16_decode_preprocess"]["pairs_per_s"])
        results[codec] = row
    return results


def _print(results: dict) -> None:
    for key, rows in results.items():
        cells = "  ".join(f"{name} {row['frames_per_s']:8.1f}" for name, row in rows.items())
        print(f"  {key:14s} frames/s: {cells}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny videos, one rep, temp output")
    ap.add_argument("--gpu", action="store_true", help="also run the GPU comparison (CUDA)")
    ap.add_argument("--reps", type=int)
    ap.add_argument("--batch", type=int, default=8, help="videos per DALI GPU call")
    ap.add_argument("--cache-dir", default=os.environ.get(
        "TPO_FAST_BENCH_CACHE", str(Path(tempfile.gettempdir()) / "tpo_fast_bench_videos")))
    ap.add_argument("--out", help="result path (default: benchmarks/results/video-<mode>-"
                                   "<device>.json)")
    args = ap.parse_args(argv)
    cfg = dict(SMOKE if args.smoke else FULL)
    cfg["reps"] = args.reps or cfg["reps"]
    cache = Path(args.cache_dir) / ("smoke" if args.smoke else "full")
    videos = make_videos(cache, cfg["seconds"], cfg["width"], cfg["height"], cfg["fps"])
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    import av

    result = {"config": {**cfg, "videos": {k: Path(v).name for k, v in videos.items()},
                         "pyav_version": av.__version__, "ffmpeg_threads": "auto",
                         "gop_frames": 2 * cfg["fps"], "plans": list(make_plans(
                             probe(videos["h264"]), cfg["frames"]))},
              "cpu": run_cpu(videos, cfg["frames"], cfg["reps"]), "all_frames_verified": True}
    print(f"{cfg['seconds']} s {cfg['width']}x{cfg['height']} @ {cfg['fps']} fps, "
          f"{cfg['frames']}-frame plans, median of {cfg['reps']}")
    _print(result["cpu"])
    mode = "cpu"
    if args.gpu:
        if not torch.cuda.is_available():
            raise SystemExit("--gpu needs a CUDA device")
        result["gpu"] = run_gpu(videos, cfg["frames"], cfg["reps"], args.batch)
        mode = "gpu"
        for codec, row in result["gpu"].items():
            dali = row["dali_gpu_batch_decode_preprocess"]["pairs_per_s"]
            pyav = row["pyav16_decode_preprocess"]["pairs_per_s"]
            print(f"  gpu {codec}: pairs/s DALI GPU {dali:.1f}, PyAV x16 {pyav:.1f} "
                  f"({row['speedup_pairs_per_s']:.1f}x)")
    out = args.out or (tempfile.mkdtemp(prefix="tpo_bench_") + "/video.json"
                       if args.smoke else None)
    path = write_result(f"video-{mode}", result, out)
    print(f"  written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
