"""The longest pair (frames) whose training step fits a memory cap: sequence parallelism
(DeepSpeed Ulysses, ``tpo_fast.sequence_parallel``) SP = 1 vs 2, ALST's tiled MLP off and on.

    python -m benchmarks.long_video                      # CPU: 2 gloo processes for SP = 2
    python -m benchmarks.long_video --device cuda        # LLaVA-Video-7B shape; SP = 2 needs 2 GPUs
    python -m benchmarks.long_video --smoke              # tiny CPU run, seconds (CI)

For each configuration (SP, tiled MLP) the orchestrator launches ``torch.distributed.run`` with
SP processes; each rank runs one TPO training step (forward with the fused loss, backward;
the optimizer's state is not part of it) on one pair whose video has F frames, for F along a
ladder (doubling), and records its peak memory above the level before the step (CUDA: the
allocator's peak; CPU: the resident set's peak, sampled every 5 ms, glibc's mmap threshold
fixed). The largest rank's peak is the step's; the ladder stops at the first F over
``--cap-mib`` (or out of memory). ``longest_frames`` is the last F that fitted.

Shapes: CPU — LLaVA-OneVision (SigLIP + Qwen2 LM, random weights) with a 512-wide, 2-layer LM
(GQA 8/2 heads, MLP 5.4x) and 112-px frames of 16 tokens, fp32; CUDA — SigLIP-so400m + Qwen2-7B
with the LM truncated to ``--layers`` layers, bf16 (the per-layer memory is what SP divides).
The vision tower is frozen and the projector trained, as in TPO; precomputed reference
log-probs (random); β = 0.1, α = 1.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SHAPES = {
    "cpu": dict(text=dict(hidden_size=512, intermediate_size=2752, num_hidden_layers=2,
                          num_attention_heads=8, num_key_value_heads=2, vocab_size=None),
                vision=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=1,
                            num_attention_heads=2, image_size=112, patch_size=14),
                ladder=(32, 64, 128, 256, 512, 1024, 2048), cap_mib=1024, response_tokens=64,
                dtype="float32"),
    "cuda": dict(text=None, vision=None, ladder=(64, 128, 256, 512, 1024), cap_mib=120 * 1024,
                 response_tokens=256, dtype="bfloat16"),
    # train_throughput's smoke model
    "smoke": dict(text=None, vision=None, ladder=(2, 4), cap_mib=4096, response_tokens=4,
                  dtype="float32"),
}
CONFIGS = ((1, 0), (1, 4), (2, 0), (2, 4))  # (SP, tiled-MLP tiles; 0: off)
SMOKE_CONFIGS = ((1, 0), (2, 4))  # each code path once


def _shape(name: str, layers: int) -> dict:
    from benchmarks import train_throughput as tt

    shape = dict(SHAPES[name])
    if name == "cuda":
        shape.update(text=dict(tt.QWEN2_7B_TEXT, num_hidden_layers=layers),
                     vision=tt.SIGLIP_SO400M)
    elif name == "smoke":
        shape.update(text=tt.SHAPES["smoke"]["text"], vision=tt.SHAPES["smoke"]["vision"])
    return shape


# ---- one rank ----------------------------------------------------------------------------------
def worker(args) -> None:
    import deepspeed
    import torch.distributed as dist

    from benchmarks.train_throughput import (
        RSSPeak,
        build_config,
        build_model,
        fix_malloc_threshold,
        make_pairs,
        pack,
    )
    from tpo_fast.models import PreferenceModel
    from tpo_fast.sequence_parallel import init_sequence_parallel

    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    else:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        fix_malloc_threshold()
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    shape = _shape(args.shape, args.layers)
    dtype = getattr(torch, {"float32": "float32", "bfloat16": "bfloat16"}[shape["dtype"]])
    config = build_config(shape)
    model = build_model(config, device, dtype)
    policy = PreferenceModel(model)
    if args.tiles:
        from tpo_fast.models.tiled_mlp import enable_tiled_mlp

        enable_tiled_mlp(policy.adapter.base, args.tiles)
    sp, _ = init_sequence_parallel(args.sp, config)
    policy.enable_sequence_parallel(sp)
    rows = []
    first = make_pairs(policy, config, 1, shape["ladder"][0], None, shape["response_tokens"])
    warm = policy.shard(pack(policy, first, ref_logps=-torch.ones(1, 2)))
    _measure(policy, warm, device, cuda, RSSPeak)  # first-call allocations, untimed
    for frames in shape["ladder"]:
        pairs = make_pairs(policy, config, 1, frames, None, shape["response_tokens"])
        batch = policy.shard(pack(policy, pairs, ref_logps=-torch.rand(1, 2) * 50))
        policy.zero_grad(set_to_none=True)
        peak, seconds, error = _measure(policy, batch, device, cuda, RSSPeak)
        flags = [None] * dist.get_world_size()
        dist.all_gather_object(flags, (peak, seconds, error))
        worst = max((f[0] or 0) for f in flags)
        error = next((f[2] for f in flags if f[2]), None)
        row = dict(frames=frames, tokens=batch.num_tokens, peak_mib=round(worst / 2**20, 1),
                   per_rank_peak_mib=[round((f[0] or 0) / 2**20, 1) for f in flags],
                   seconds=round(max(f[1] for f in flags), 3), error=error,
                   fits=error is None and worst <= args.cap_mib * 2**20)
        rows.append(row)
        if dist.get_rank() == 0:
            print(f"long_video: SP={args.sp} tiles={args.tiles} {row}", file=sys.stderr)
            Path(args.out).write_text(json.dumps(rows))  # after every rung: a kill keeps them
        if not row["fits"]:
            break
    dist.barrier()
    # no group teardown: gloo's teardown of the SP groups aborted a process now and then
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(0)


def _measure(policy, batch, device, cuda: bool, RSSPeak):
    """(peak extra bytes, seconds, error or None) of one forward + backward."""
    from tpo_fast.kernels import LossSpec

    def step():
        loss, _ = policy(batch.to(device), loss=LossSpec(beta=0.1, sft_weight=1.0))
        loss.backward()

    try:
        if cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            step()
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - base, time.perf_counter() - t0, None
        with RSSPeak() as mem:
            t0 = time.perf_counter()
            step()
            seconds = time.perf_counter() - t0
        return mem.extra, seconds, None
    except Exception as exc:  # out of memory, or any failure: recorded, the ladder stops
        from benchmarks.harness import failure

        if cuda:
            torch.cuda.empty_cache()
        return None, 0.0, failure(exc)["error"]


# ---- the orchestrator ---------------------------------------------------------------------------
def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def run_config(args, sp: int, tiles: int) -> dict:
    if args.device == "cuda" and torch.cuda.device_count() < sp:
        return dict(sp=sp, tiled_mlp=tiles, skipped=f"needs {sp} GPUs, "
                    f"{torch.cuda.device_count()} here")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={sp}",
               f"--master_port={_port()}", "-m", "benchmarks.long_video", "--worker",
               "--device", args.device, "--shape", args.shape, "--layers", str(args.layers),
               "--sp", str(sp), "--tiles", str(tiles), "--cap-mib", str(args.cap_mib),
               "--out", str(out)]
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)
                   + os.pathsep + os.environ.get("PYTHONPATH", ""))
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not out.exists():
            rows = json.loads(out.read_text()) if out.exists() else []  # the rungs it finished
            return dict(sp=sp, tiled_mlp=tiles, error=proc.stderr[-3000:], rows=rows)
        rows = json.loads(out.read_text())
    fitting = [r["frames"] for r in rows if r["fits"]]
    return dict(sp=sp, tiled_mlp=tiles, rows=rows, wall_s=round(time.perf_counter() - t0, 1),
                longest_frames=max(fitting) if fitting else 0,
                ladder_exhausted=bool(rows) and rows[-1]["fits"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--layers", type=int, default=2, help="CUDA: Qwen2-7B layers kept")
    parser.add_argument("--cap-mib", type=int, default=None)
    parser.add_argument("--out", default=None)
    # worker-only
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shape", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--sp", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--tiles", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    from benchmarks.harness import write_result

    args.shape = "smoke" if args.smoke else args.device
    shape = _shape(args.shape, args.layers)
    if args.cap_mib is None:
        args.cap_mib = shape["cap_mib"]
    configs = SMOKE_CONFIGS if args.smoke else CONFIGS
    results = []
    for sp, tiles in configs:
        results.append(run_config(args, sp, tiles))
        r = results[-1]
        print(f"SP={r['sp']} tiled_mlp={r['tiled_mlp']}: longest "
              f"{r.get('longest_frames', '-')} frames "
              f"{r.get('skipped') or ('error' if 'error' in r else '')}", file=sys.stderr)
        payload = dict(shape=args.shape, device=args.device, cap_mib=args.cap_mib,
                       layers=args.layers if args.device == "cuda" else None,
                       ladder=list(shape["ladder"]), configs=results,
                       complete=len(results) == len(configs),
                       command="python -m benchmarks.long_video " + " ".join(argv or sys.argv[1:]))
        path = write_result("long_video", payload, args.out)  # after every configuration
    print(f"long_video: wrote {path}", file=sys.stderr)
    return 0 if not any("error" in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
