"""Prefix-shared attention over a packed micro-batch, with several interchangeable kernels.

All backends compute the PackedBatch contract (DESIGN.md): query segment ``s`` holds the packed
tokens ``cu_seqlens_q[s]:cu_seqlens_q[s+1]``; its keys are the packed tokens
``kv_index[cu_seqlens_k[s]:cu_seqlens_k[s+1]]``; attention is causal inside a segment, aligned
bottom-right (query ``j`` of a segment with ``Lq`` queries and ``Lk`` keys sees key slots
``<= Lk - Lq + j``). Keys and values are gathered through ``kv_index``, so the rejected segment
reads the prompt's keys and values, and gradients from both responses flow back into them.

Backends (``PackedAttention.backend``):
* ``flash_attn``   flash-attn varlen (FA2, FA3 or FA4, whichever is installed); CUDA, fp16/bf16.
                   Causal is aligned bottom-right since flash-attn 2.1.
* ``torch_varlen`` ``torch.nn.attention.varlen.varlen_attn`` (PyTorch >= 2.10); CUDA, fp16/bf16.
                   Not yet checked on a GPU for q_len != k_len (no PyTorch version verified), so
                   ``auto`` never picks it; tests/test_attention.py has the GPU check.
* ``flex``         FlexAttention with a block mask built on the host from the segment
                   structure (``block_mask.py``: no dense [T, Σk] tensor); CUDA.
* ``sdpa``         scaled_dot_product_attention with a dense [T, Σk] boolean mask; any device.
                   The CPU path; memory grows as T·Σk, so it is for small batches.
* ``auto``         CUDA: flash_attn if installed, else flex; otherwise sdpa.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from tpo_fast.packing.batch import HostOffsets

BACKENDS = ("auto", "flash_attn", "torch_varlen", "flex", "sdpa")


# flash-attn's varlen entry points, newest first: (interface, module). The three take different
# arguments (checked against each package's source by tests/test_flash_signatures.py):
#   FA2 flash_attn.flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
#       max_seqlen_k, dropout_p=0.0, softmax_scale=None, causal=False, ...)
#   FA3 flash_attn_interface.flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k,
#       max_seqlen_q, max_seqlen_k, seqused_q=None, seqused_k=None, softmax_scale=None,
#       causal=False, ...): no dropout
#   FA4 flash_attn.cute.flash_attn_varlen_func(q, k, v, qv=None, cu_seqlens_q=None, ...,
#       softmax_scale=None, causal=False, ...): no dropout; returns (out, lse)
# So every call passes all but q, k, v by keyword. FA4's ``gather_kv_indices`` is not a
# replacement for our kv_index gather: it is a per-query top-k index [total_q, width] for its
# sparse MLA kernel and is accepted only together with ``qv`` (flash-attn-4 4.0.0b36).
FLASH_INTERFACES = (("fa4", "flash_attn.cute"), ("fa3", "flash_attn_interface"),
                    ("fa2", "flash_attn"))
FLASH_DROPOUT = frozenset({"fa2"})  # the interfaces whose varlen function takes dropout_p


@dataclass(frozen=True)
class FlashVarlen:
    """One flash-attn interface: its name ("fa2", "fa3", "fa4") and varlen function."""

    interface: str
    fn: object

    def __call__(self, q, k, v, packed: PackedAttention, scale: float, dropout: float):
        kwargs = dict(cu_seqlens_q=packed.cu_seqlens_q, cu_seqlens_k=packed.cu_seqlens_k,
                      max_seqlen_q=packed.max_seqlen_q, max_seqlen_k=packed.max_seqlen_k,
                      softmax_scale=scale, causal=True)
        if self.interface in FLASH_DROPOUT:
            kwargs["dropout_p"] = dropout
        elif dropout:
            raise ValueError(f"flash-attn's {self.interface} interface has no attention dropout "
                             f"(got dropout={dropout}); set the model's attention_dropout to 0 "
                             "or use flash-attn 2")
        out = self.fn(q, k, v, **kwargs)
        return out[0] if isinstance(out, tuple) else out  # FA4 (and older FA3) add the LSE


def load_flash_varlen(interface: str) -> FlashVarlen | None:
    """The named flash-attn interface if it imports, else None."""
    module = dict(FLASH_INTERFACES)[interface]
    try:
        return FlashVarlen(interface, importlib.import_module(module).flash_attn_varlen_func)
    except (ImportError, AttributeError, OSError, RuntimeError):
        return None


@functools.cache
def _flash_varlen() -> FlashVarlen | None:
    """The newest installed flash-attn interface (FA4, FA3, FA2), or None."""
    for interface, _ in FLASH_INTERFACES:
        found = load_flash_varlen(interface)
        if found is not None:
            return found
    return None


@dataclass(frozen=True)
class TorchVarlen:
    """This PyTorch's ``varlen_attn`` with its causal argument bound; ``gqa``: whether it takes
    ``enable_gqa``. The signatures, as published:
      2.10  varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False,
            return_aux=None, scale=None)
      2.11  varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *,
            return_aux=None, scale=None, window_size=(-1, -1))   (causal: window (-1, 0);
            torch/nn/attention/varlen.py of the torch 2.11.0 wheel: no enable_gqa)
      later window_size=(-1, -1), enable_gqa=False
    Without ``enable_gqa`` the keys and values are expanded to the query heads first (correct
    for any kernel; [Σk, Hq, D] instead of [Σk, Hkv, D] per layer)."""

    fn: object
    gqa: bool

    def __call__(self, q, k, v, packed: PackedAttention, scale: float) -> torch.Tensor:
        groups = q.shape[1] // k.shape[1]
        extra = {}
        if groups > 1 and self.gqa:
            extra["enable_gqa"] = True
        elif groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        return self.fn(q, k, v, packed.cu_seqlens_q, packed.cu_seqlens_k, packed.max_seqlen_q,
                       packed.max_seqlen_k, scale=scale, **extra)


@functools.cache
def _torch_varlen() -> TorchVarlen | None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    if "window_size" in params:  # PyTorch >= 2.11: causal is the window (-1, 0)
        fn = functools.partial(varlen_attn, window_size=(-1, 0))
    else:
        fn = functools.partial(varlen_attn, is_causal=True)  # PyTorch 2.10
    return TorchVarlen(fn, "enable_gqa" in params)


def available_backends(device: torch.device | str) -> list[str]:
    """Backends that can run on ``device`` in this environment."""
    out = ["sdpa"]
    if torch.device(device).type == "cuda":
        out.append("flex")
        if _torch_varlen() is not None:
            out.append("torch_varlen")
        if _flash_varlen() is not None:
            out.append("flash_attn")
    return out


@dataclass(eq=False)
class PackedAttention(HostOffsets):
    """What the attention layers of one packed forward need; built once per micro-batch.

    cu_seqlens_q, cu_seqlens_k: int32 [2n+1]; kv_index: int64 [Σk]; all on the model's device.
    host_cu_seqlens_q/k: the same offsets as Python ints (the packer's; read back from the
    tensors, once, when not given), so no layer reads a device tensor (no host sync).
    flash: a specific flash-attn interface (``load_flash_varlen``); default the newest installed.
    Derived masks are cached here, so every layer of the forward reuses them.
    """

    cu_seqlens_q: torch.Tensor
    cu_seqlens_k: torch.Tensor
    max_seqlen_q: int
    max_seqlen_k: int
    kv_index: torch.Tensor
    backend: str = "auto"
    host_cu_seqlens_q: tuple[int, ...] | None = None
    host_cu_seqlens_k: tuple[int, ...] | None = None
    flash: FlashVarlen | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {self.backend!r}; choose from {BACKENDS}")
        if self.host_cu_seqlens_q is None:
            self.host_cu_seqlens_q = tuple(self.cu_seqlens_q.tolist())
        if self.host_cu_seqlens_k is None:
            self.host_cu_seqlens_k = tuple(self.cu_seqlens_k.tolist())
        self.host_cu_seqlens_q = tuple(int(x) for x in self.host_cu_seqlens_q)
        self.host_cu_seqlens_k = tuple(int(x) for x in self.host_cu_seqlens_k)
        self.max_seqlen_q, self.max_seqlen_k = int(self.max_seqlen_q), int(self.max_seqlen_k)

    @classmethod
    def from_batch(cls, batch, backend: str = "auto", device=None) -> PackedAttention:
        """From a PackedBatch / PackedIndices (moved to ``device`` if given; non-blocking, and
        the host offsets come from the batch, so nothing is read back from a device)."""
        move = (lambda t: t.to(device, non_blocking=True)) if device is not None else (lambda t: t)
        return cls(move(batch.cu_seqlens_q), move(batch.cu_seqlens_k), batch.max_seqlen_q,
                   batch.max_seqlen_k, move(batch.kv_index), backend,
                   getattr(batch, "host_cu_seqlens_q", None),
                   getattr(batch, "host_cu_seqlens_k", None))

    def resolve(self, q: torch.Tensor) -> str:
        if self.backend != "auto":
            if self.backend not in available_backends(q.device):
                raise RuntimeError(f"attention backend {self.backend!r} is not available on "
                                   f"{q.device}; available: {available_backends(q.device)}")
            return self.backend
        if q.device.type != "cuda":
            return "sdpa"
        if _flash_varlen() is not None and q.dtype in (torch.float16, torch.bfloat16):
            return "flash_attn"
        return "flex"

    def attend(self, q, k, v, scale: float | None = None, dropout: float = 0.0) -> torch.Tensor:
        """q [T, Hq, D], k/v [T, Hkv, D] over the packed tokens -> [T, Hq, D]."""
        if q.shape[0] != self.num_tokens or k.shape[0] != self.num_tokens:
            raise ValueError(f"packed attention expects {self.num_tokens} tokens, got q "
                             f"{tuple(q.shape)} and k {tuple(k.shape)}")
        if q.shape[1] % k.shape[1]:
            raise ValueError(
                f"{q.shape[1]} query heads are not a multiple of {k.shape[1]} kv heads")
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        backend = self.resolve(q)
        k, v = k.index_select(0, self.kv_index), v.index_select(0, self.kv_index)
        return _IMPLS[backend](self, q, k, v, scale, dropout)

    # Segment id and offset of every query and key slot; the mask rule reads only these.
    def _segments(self, device):
        if "segments" not in self._cache:
            cu_q, cu_k = self.cu_seqlens_q.long(), self.cu_seqlens_k.long()
            q_len, k_len = cu_q.diff(), cu_k.diff()
            seg = torch.arange(len(q_len), device=device)
            seg_q = seg.repeat_interleave(q_len, output_size=self.num_tokens)
            seg_k = seg.repeat_interleave(k_len, output_size=self.num_keys)
            # Query j of a segment may see key slots <= j + (Lk - Lq): the last allowed slot.
            last_q = torch.arange(len(seg_q), device=device) - cu_q[seg_q] + (k_len - q_len)[seg_q]
            pos_k = torch.arange(len(seg_k), device=device) - cu_k[seg_k]
            self._cache["segments"] = (seg_q, seg_k, last_q, pos_k)
        return self._cache["segments"]

    def dense_mask(self, device) -> torch.Tensor:
        """[T, Σk] bool: query t may attend key slot j."""
        if "dense" not in self._cache:
            seg_q, seg_k, last_q, pos_k = self._segments(device)
            self._cache["dense"] = (seg_q[:, None] == seg_k[None, :]) & (
                pos_k[None, :] <= last_q[:, None])
        return self._cache["dense"]

    def block_mask(self, device, lengths: tuple[int, int] | None = None):
        """FlexAttention BlockMask from the segment structure (no dense [T, Σk] mask), for
        inputs padded to ``lengths`` (query, key) when given."""
        key = ("block", lengths)
        if key not in self._cache:
            from tpo_fast.attention.block_mask import packed_block_mask

            self._cache[key] = packed_block_mask(self.host_cu_seqlens_q, self.host_cu_seqlens_k,
                                                 device, lengths=lengths)
        return self._cache[key]


def _sdpa(packed, q, k, v, scale, dropout):
    """One SDPA call per segment on 4-D views: a prompt+chosen segment is plain causal
    (``is_causal``); a rejected segment's queries see the whole prompt and their own causal
    prefix (a small [R, P+R] bottom-right mask). PyTorch's fused CPU kernel takes only 4-D
    inputs; a dense [T, Σk] mask over the micro-batch on [H, T, D] tensors ran its math kernel
    (66% of a reference pass in benchmarks/train_throughput's profile, and quadratic in the
    micro-batch)."""
    cu_q, cu_k = packed.host_cu_seqlens_q, packed.host_cu_seqlens_k
    gqa = q.shape[1] != k.shape[1]
    outs = []
    for s in range(len(cu_q) - 1):
        qs = q[cu_q[s]:cu_q[s + 1]].transpose(0, 1)[None]  # [1, H, Lq, D]
        ks = k[cu_k[s]:cu_k[s + 1]].transpose(0, 1)[None]
        vs = v[cu_k[s]:cu_k[s + 1]].transpose(0, 1)[None]
        lq, lk = qs.shape[2], ks.shape[2]
        mask = None
        if lq != lk:  # query j sees key slots <= j + (Lk - Lq)
            mask = (torch.arange(lk, device=q.device)[None, :]
                    <= torch.arange(lq, device=q.device)[:, None] + (lk - lq))
        out = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, is_causal=mask is None,
                                             dropout_p=dropout, scale=scale, enable_gqa=gqa)
        outs.append(out[0].transpose(0, 1))
    return torch.cat(outs)


def _flash_attn(packed, q, k, v, scale, dropout):
    return (packed.flash or _flash_varlen())(q, k, v, packed, scale, dropout)


def _torch_varlen_attn(packed, q, k, v, scale, dropout):
    if dropout:
        raise ValueError("the torch_varlen backend has no attention dropout")
    return _torch_varlen()(q, k, v, packed, scale)


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True)


def flex_bucketed(flex, packed, q, k, v, scale):
    """q [T, Hq, D], k/v [Σk, Hkv, D] -> [T, Hq, D] through ``flex`` (a compiled
    ``flex_attention``), the inputs zero-padded to ``bucketed_length`` (T and Σk to whole tiles,
    at least two) and the block mask built for the padded lengths (padding matches nothing), so
    one compiled graph serves micro-batches of every length: a recompile per length would, past
    Dynamo's recompile limit, fall back to eager flex with dense [T, Σk] scores."""
    from tpo_fast.attention.block_mask import bucketed_length

    T, K = q.shape[0], k.shape[0]
    Tp, Kp = bucketed_length(T), bucketed_length(K)

    def heads_first(x, n):  # [L, H, D] -> [1, H, n, D], zero rows past L
        x = x.transpose(0, 1)[None]
        return F.pad(x, (0, 0, 0, n - x.shape[2])) if n > x.shape[2] else x

    out = flex(heads_first(q, Tp), heads_first(k, Kp), heads_first(v, Kp),
               block_mask=packed.block_mask(q.device, (Tp, Kp)), scale=scale,
               enable_gqa=q.shape[1] != k.shape[1])
    return out[0, :, :T].transpose(0, 1)


def _flex(packed, q, k, v, scale, dropout):
    if dropout:
        raise ValueError("the flex backend has no attention dropout")
    return flex_bucketed(_compiled_flex(), packed, q, k, v, scale)


_IMPLS = {"sdpa": _sdpa, "flash_attn": _flash_attn, "torch_varlen": _torch_varlen_attn,
          "flex": _flex}
