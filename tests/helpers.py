"""Helpers shared by the test files (one place instead of copies from file to file, STYLE.md
"Avoid"). Fixtures live in conftest.py; plain functions and constants here, imported as
``from helpers import ...`` (``tests/`` is on ``sys.path``: pyproject.toml's pytest
``pythonpath``, and subprocess workers get it through ``subprocess_env``)."""

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
TINY = ROOT / "configs" / "tiny.yaml"
# The CLI's overrides that keep a test run's output small: no progress bar, no TensorBoard, no plot.
QUIET = ["run.progress=false", "run.tensorboard=false", "run.plot=false"]


# -- processes -------------------------------------------------------------------------------

def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def subprocess_env(*, tests_on_path: bool = False) -> dict:
    """os.environ for a child process: without the distributed variables an in-process run of
    a test may have set, with the clone (and ``tests/`` if asked) on ``PYTHONPATH``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
                        "LOCAL_WORLD_SIZE")}
    paths = [str(ROOT), *([str(TESTS)] if tests_on_path else [])]
    env["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [env.get("PYTHONPATH")])])
    return env


def torchrun_cmd(args, nproc: int = 1, module: str = "tpo_fast") -> list[str]:
    """``python -m torch.distributed.run`` with ``nproc`` processes on a free port, running
    ``python -m MODULE ARGS``."""
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            f"--master_port={free_port()}", "-m", module, *map(str, args)]


def tpo_fast(args, nproc=1, timeout=600):
    """``tpo-fast ARGS`` under torchrun with ``nproc`` processes; returns the finished process."""
    proc = subprocess.run(torchrun_cmd(args, nproc), env=subprocess_env(), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def wait_for(ready, proc, timeout: float, poll: float = 0.02) -> None:
    """Poll until ``ready()`` is true, the process ``proc`` has ended, or ``timeout`` seconds
    have passed (the caller asserts which)."""
    deadline = time.monotonic() + timeout
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(poll)


def rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of the torchrun worker with RANK=rank (a child of the launcher)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher and f"RANK={rank}".encode() in env:
            return int(proc.name)
    return None


# -- training runs ---------------------------------------------------------------------------

def assert_losses_equal(one, two, tol=1e-5):
    """Two metrics.jsonl row lists: the same steps over the same pairs, losses equal to ``tol``
    relative."""
    assert len(one) == len(two) and one
    for a, b in zip(one, two):
        assert a["pairs"] == b["pairs"]
        assert abs(a["loss"] - b["loss"]) <= tol * max(1.0, abs(a["loss"])), (a, b)


# -- models ----------------------------------------------------------------------------------

QUESTIONS = [
    "what colour was the circle that appeared between 0 : 04 and 0 : 06 ?",
    "how many shapes appeared ?",
    "what happened right after the red star vanished ?",
    "in what order did the colours appear ?",
    "which shape moved left ?",
]


def tiny_video_pairs(family, tokenizer, model, n_pairs, seed, one_token=False):
    """``n_pairs`` (prompt ids, chosen ids, rejected ids, video inputs) for a tiny model of
    ``family``: random videos of 1-3 frame steps, responses of 1-6 / 1-4 random tokens (one
    token each with ``one_token``)."""
    from tpo_fast.models import adapter_for
    from tpo_fast.models.tiny import random_video

    adapter = adapter_for(model)
    step = 2 if family.startswith("qwen") else 1  # Qwen-VL: frames come in temporal patches
    gen = torch.Generator().manual_seed(seed)
    videos, prompts, chosen, rejected = [], [], [], []
    for i in range(n_pairs):
        frames = step * (1 + (i * 2 + seed) % 3)
        video = random_video(family, model.config, frames, seed=seed * 100 + i)
        videos.append(video)
        prompts.append(adapter.prompt_ids(tokenizer, QUESTIONS[(i + seed) % 5], video))
        lens = (1, 1) if one_token else (1 + (3 * i + seed) % 6, 1 + (5 * i + 2 * seed) % 4)
        chosen.append(torch.randint(20, len(tokenizer), (lens[0],), generator=gen).tolist())
        rejected.append(torch.randint(20, len(tokenizer), (lens[1],), generator=gen).tolist())
    return prompts, chosen, rejected, videos


def count_calls(module):
    """A list that grows by one per forward call of ``module``, and the hook's handle."""
    calls = []
    handle = module.register_forward_hook(lambda *args: calls.append(1))
    return calls, handle


def video_feature_rows(pooled) -> int:
    """The number of video token rows in an adapter's ``video_features(...).pooler_output``
    (one tensor, or a tuple/list of per-video tensors)."""
    if isinstance(pooled, (tuple, list)):
        return sum(p.reshape(-1, p.shape[-1]).shape[0] for p in pooled)
    return pooled.reshape(-1, pooled.shape[-1]).shape[0]


# -- attention -------------------------------------------------------------------------------

def fake_varlen_attn(sig, seen, check=None):
    """A stand-in for ``torch.nn.attention.varlen.varlen_attn`` with the installed signature
    ``sig``: it binds each call (so a keyword the installed PyTorch does not take fails),
    records the bound arguments in ``seen``, calls ``check(arguments)`` if given, and returns
    the naive prefix-shared attention on the call's ``cu_seq_*``."""
    from tpo_fast.attention import PackedAttention
    from tpo_fast.attention.naive import naive_prefix_shared_attention

    def fake(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        seen.append(a)
        if check is not None:
            check(a)
        ident = PackedAttention(a["cu_seq_q"], a["cu_seq_k"], a["max_q"], a["max_k"],
                                torch.arange(a["key"].shape[0]), "sdpa")
        return naive_prefix_shared_attention(ident, a["query"], a["key"], a["value"],
                                                 scale=a["scale"])

    fake.__signature__ = sig
    return fake


@contextlib.contextmanager
def patched_varlen_attn(monkeypatch, sig, check=None):
    """``torch.nn.attention.varlen.varlen_attn`` replaced by ``fake_varlen_attn(sig, seen,
    check)`` with the torch_varlen backend's probe cleared before and after; yields ``seen``."""
    import torch.nn.attention.varlen as varlen

    from tpo_fast.attention import backends

    seen = []
    monkeypatch.setattr(varlen, "varlen_attn", fake_varlen_attn(sig, seen, check))
    backends._torch_varlen.cache_clear()
    try:
        yield seen
    finally:
        backends._torch_varlen.cache_clear()


# -- the LLaVA-NeXT checkpoint layout (LongVA, LLaVA-Video) ------------------------------------

def vision_encoder_layer_shapes(tower: str, width: int, intermediate: int, layers: int) -> dict:
    """The tensors of a CLIP / SigLIP encoder's ``layers`` layers under ``tower`` (a name
    prefix ending in "."), by name: attention projections, the two layer norms, the MLP."""
    shapes = {}
    for n in range(layers):
        layer = f"{tower}encoder.layers.{n}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes |= {f"{layer}self_attn.{proj}.weight": (width, width),
                       f"{layer}self_attn.{proj}.bias": (width,)}
        for norm in ("layer_norm1", "layer_norm2"):
            shapes |= {f"{layer}{norm}.weight": (width,), f"{layer}{norm}.bias": (width,)}
        shapes |= {f"{layer}mlp.fc1.weight": (intermediate, width),
                   f"{layer}mlp.fc1.bias": (intermediate,),
                   f"{layer}mlp.fc2.weight": (width, intermediate),
                   f"{layer}mlp.fc2.bias": (width,)}
    return shapes


def qwen2_decoder_layer_shapes(cfg: dict) -> dict:
    """The tensors of a Qwen2 language model's decoder layers (``model.layers.N.``), by name,
    from a config.json's sizes (q/k/v with biases, o_proj without, SwiGLU MLP, RMS norms)."""
    h, i_t = cfg["hidden_size"], cfg["intermediate_size"]
    kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    shapes = {}
    for n in range(cfg["num_hidden_layers"]):
        layer = f"model.layers.{n}."
        for proj, rows in (("q_proj", h), ("k_proj", kv), ("v_proj", kv)):
            shapes |= {f"{layer}self_attn.{proj}.weight": (rows, h),
                       f"{layer}self_attn.{proj}.bias": (rows,)}
        shapes |= {layer + "self_attn.o_proj.weight": (h, h),
                   layer + "mlp.gate_proj.weight": (i_t, h), layer + "mlp.up_proj.weight": (i_t, h),
                   layer + "mlp.down_proj.weight": (h, i_t),
                   layer + "input_layernorm.weight": (h,),
                   layer + "post_attention_layernorm.weight": (h,)}
    return shapes


def write_sharded_checkpoint(folder: Path, cfg: dict, tensors: dict, shards: int = 3) -> None:
    """config.json + ``tensors`` over ``shards`` safetensors files + the index, as
    ``save_pretrained`` and the LLaVA-NeXT releases write them (model-0000k-of-0000n)."""
    import json

    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    names = list(tensors)
    weight_map, total = {}, 0
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[s::shards]}
        save_file(part, folder / file, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, file)
        total += sum(t.numel() * t.element_size() for t in part.values())
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}))
