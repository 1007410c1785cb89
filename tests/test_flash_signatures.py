"""Our flash-attn calls against the real signatures of FA2, FA3 and FA4 (and the torch_varlen
call against the installed PyTorch's).

``flash_signatures.json`` holds the parameter lists of each interface's
``flash_attn_varlen_func``, parsed with ``ast`` from the published sources (FA2
``flash_attn/flash_attn_interface.py`` and FA3 ``hopper/flash_attn_interface.py`` of
Dao-AILab/flash-attention, FA4 ``flash_attn/cute/interface.py`` of the flash-attn-4 wheel on
PyPI). Regenerate it with

    python tests/test_flash_signatures.py write FA2_SOURCE FA3_SOURCE FA4_SOURCE "provenance..."

Each test installs a fake module whose function has the real signature (``inspect.Signature``
built from the JSON): a wrong or missing keyword raises ``TypeError`` like the real one would,
and the fake computes the attention from the arguments it was bound to, so an argument that
lands in the wrong parameter (FA4's ``qv`` after ``v``) gives a wrong answer.
With ``TPO_FLASH_ATTN_SOURCES=dir`` (holding fa2.py, fa3.py, fa4.py) the JSON is checked
against those sources too.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import os
import sys
import types
from pathlib import Path

import pytest
import torch

from tpo_fast.attention import PackedAttention, backends
from tpo_fast.attention.naive import naive_prefix_shared_attention
from tpo_fast.packing import build_indices

SIGNATURES = Path(__file__).with_name("flash_signatures.json")
MODULES = dict(backends.FLASH_INTERFACES)


def parse_signature(source: str, name: str = "flash_attn_varlen_func") -> list[dict]:
    """The parameters of the module-level function ``name`` in ``source``."""
    tree = ast.parse(source)
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    args = fn.args
    pos = args.posonlyargs + args.args
    defaults = [None] * (len(pos) - len(args.defaults)) + list(args.defaults)
    params = [{"name": a.arg, "kind": "POSITIONAL_OR_KEYWORD" if a in args.args
               else "POSITIONAL_ONLY", "default": None if d is None else ast.unparse(d)}
              for a, d in zip(pos, defaults)]
    params += [{"name": a.arg, "kind": "KEYWORD_ONLY",
                "default": None if d is None else ast.unparse(d)}
               for a, d in zip(args.kwonlyargs, args.kw_defaults)]
    if args.vararg or args.kwarg:
        raise ValueError(f"{name} takes *args/**kwargs; a fake could not check keywords")
    return params


def _signature(params: list[dict]) -> inspect.Signature:
    return inspect.Signature([
        inspect.Parameter(p["name"], getattr(inspect.Parameter, p["kind"]),
                          default=inspect.Parameter.empty if p["default"] is None
                          else ast.literal_eval(p["default"]) if p["default"] != "None" else None)
        for p in params])


def _load():
    return json.loads(SIGNATURES.read_text())


def _fake_module(interface: str, calls: list) -> types.ModuleType:
    spec = _load()[interface]
    sig = _signature(spec["params"])

    def flash_attn_varlen_func(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)  # TypeError for a keyword the real one lacks
        bound.apply_defaults()
        a = bound.arguments
        calls.append(dict(a))
        for need in ("cu_seqlens_q", "cu_seqlens_k"):
            if not torch.is_tensor(a[need]):
                raise TypeError(f"{need} is {a[need]!r}")
        assert a["causal"] is True
        # k/v arrive gathered by kv_index ([Σk, Hkv, D]): attend with the identity gather.
        ident = PackedAttention(a["cu_seqlens_q"], a["cu_seqlens_k"], a["max_seqlen_q"],
                                a["max_seqlen_k"], torch.arange(a["k"].shape[0]), "sdpa")
        out = _attend_gathered(ident, a["q"], a["k"], a["v"], a["softmax_scale"])
        return (out, torch.zeros(a["q"].shape[1], a["q"].shape[0])) if spec["returns_lse"] \
            else out

    module = types.ModuleType(MODULES[interface])
    module.flash_attn_varlen_func = flash_attn_varlen_func
    return module


def _attend_gathered(packed, q, k, v, scale):
    return naive_prefix_shared_attention(packed, q, k, v, scale=scale)


@pytest.fixture
def fake_flash(monkeypatch):
    def install(interface: str) -> list:
        calls: list = []
        name = MODULES[interface]
        parent = name.split(".")[0]
        module = _fake_module(interface, calls)
        if "." in name:  # flash_attn.cute: a parent package holding the submodule
            pkg = types.ModuleType(parent)
            pkg.__path__ = []
            pkg.cute = module
            monkeypatch.setitem(sys.modules, parent, pkg)
        monkeypatch.setitem(sys.modules, name, module)
        return calls

    return install


@pytest.mark.parametrize("interface", ["fa2", "fa3", "fa4"])
def test_flash_call_binds_to_the_real_signature(interface, fake_flash):
    calls = fake_flash(interface)
    flash = backends.load_flash_varlen(interface)
    assert flash is not None and flash.interface == interface
    ix = build_indices([5, 9], [3, 1], [2, 4])
    packed = PackedAttention.from_batch(ix, backend="flash_attn")
    packed.flash = flash
    g = torch.Generator().manual_seed(0)
    q = torch.randn(ix.num_tokens, 4, 8, generator=g)
    k, v = (torch.randn(ix.num_tokens, 2, 8, generator=g) for _ in range(2))
    out = backends._flash_attn(packed, q, k[ix.kv_index], v[ix.kv_index], 0.3, 0.0)
    expected = naive_prefix_shared_attention(packed, q, k, v, scale=0.3)
    torch.testing.assert_close(out, expected)
    (a,) = calls
    assert a["cu_seqlens_q"] is packed.cu_seqlens_q and a["cu_seqlens_k"] is packed.cu_seqlens_k
    assert (a["max_seqlen_q"], a["max_seqlen_k"]) == (ix.max_seqlen_q, ix.max_seqlen_k)
    assert a["softmax_scale"] == 0.3
    if "qv" in a:
        assert a["qv"] is None
    if "dropout_p" in a:
        assert a["dropout_p"] == 0.0


@pytest.mark.parametrize("interface", ["fa2", "fa3", "fa4"])
def test_dropout_only_where_the_interface_has_it(interface, fake_flash):
    fake_flash(interface)
    flash = backends.load_flash_varlen(interface)
    has_dropout = "dropout_p" in [p["name"] for p in _load()[interface]["params"]]
    assert (interface in backends.FLASH_DROPOUT) == has_dropout
    ix = build_indices([3], [2], [2])
    packed = PackedAttention.from_batch(ix, backend="flash_attn")
    packed.flash = flash
    q, k, v = (torch.randn(ix.num_tokens, 2, 8) for _ in range(3))
    kk, vv = k[ix.kv_index], v[ix.kv_index]
    if has_dropout:
        backends._flash_attn(packed, q, kk, vv, 0.3, 0.1)  # binds; the fake ignores dropout
    else:
        with pytest.raises(ValueError, match=f"{interface} interface has no attention dropout"):
            backends._flash_attn(packed, q, kk, vv, 0.3, 0.1)


def test_a_positional_call_would_fail_on_fa4(fake_flash):
    """The old call (positional cu_seqlens) against FA4's signature: cu_seqlens_q lands in
    ``qv`` and the fake refuses, so the signature check can fail."""
    fake_flash("fa4")
    fn = sys.modules["flash_attn.cute"].flash_attn_varlen_func
    ix = build_indices([3], [2], [2])
    q, k, v = (torch.randn(ix.num_tokens, 2, 8) for _ in range(3))
    with pytest.raises(TypeError):
        fn(q, k[ix.kv_index], v[ix.kv_index], ix.cu_seqlens_q, ix.cu_seqlens_k, ix.max_seqlen_q,
           ix.max_seqlen_k, dropout_p=0.0, softmax_scale=1.0, causal=True)


def test_newest_interface_wins(fake_flash):
    fake_flash("fa2")
    fake_flash("fa4")
    backends._flash_varlen.cache_clear()
    try:
        assert backends._flash_varlen().interface == "fa4"
    finally:
        backends._flash_varlen.cache_clear()


def test_fa4_gather_kv_indices_is_not_our_gather():
    """FA4 has gather_kv_indices, but for its sparse top-k MLA kernel (per query, with qv):
    the reason backends.py keeps its own kv_index gather. If the parameter disappears or
    changes place, re-read the interface."""
    names = [p["name"] for p in _load()["fa4"]["params"]]
    assert "gather_kv_indices" in names and names.index("qv") == 3


@pytest.mark.skipif(not os.environ.get("TPO_FLASH_ATTN_SOURCES"),
                    reason="set TPO_FLASH_ATTN_SOURCES to a folder with fa2.py, fa3.py, fa4.py")
@pytest.mark.parametrize("interface", ["fa2", "fa3", "fa4"])
def test_recorded_signature_is_the_source(interface):
    text = (Path(os.environ["TPO_FLASH_ATTN_SOURCES"]) / f"{interface}.py").read_text()
    assert parse_signature(text) == _load()[interface]["params"]


def _write(fa2: str, fa3: str, fa4: str, provenance: str) -> None:
    out = {"provenance": provenance}
    for interface, path in (("fa2", fa2), ("fa3", fa3), ("fa4", fa4)):
        text = Path(path).read_text()
        out[interface] = {"module": MODULES[interface],
                          "sha256": hashlib.sha256(text.encode()).hexdigest(),
                          "returns_lse": interface == "fa4",
                          "params": parse_signature(text)}
    SIGNATURES.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__" and sys.argv[1:2] == ["write"]:
    _write(*sys.argv[2:6])


def test_torch_varlen_call_binds_to_this_torchs_signature(monkeypatch):
    """The torch_varlen backend's call against the installed PyTorch's varlen_attn signature."""
    varlen = pytest.importorskip("torch.nn.attention.varlen")
    sig = inspect.signature(varlen.varlen_attn)
    seen = []

    def fake(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        seen.append(a)
        ident = PackedAttention(a["cu_seq_q"], a["cu_seq_k"], a["max_q"], a["max_k"],
                                torch.arange(a["key"].shape[0]), "sdpa")
        return naive_prefix_shared_attention(ident, a["query"], a["key"], a["value"],
                                                 scale=a["scale"])

    fake.__signature__ = sig
    monkeypatch.setattr(varlen, "varlen_attn", fake)
    backends._torch_varlen.cache_clear()
    try:
        ix = build_indices([5, 9], [3, 1], [2, 4])
        packed = PackedAttention.from_batch(ix, backend="torch_varlen")
        g = torch.Generator().manual_seed(0)
        q = torch.randn(ix.num_tokens, 4, 8, generator=g)
        k, v = (torch.randn(ix.num_tokens, 2, 8, generator=g) for _ in range(2))
        out = backends._torch_varlen_attn(packed, q, k[ix.kv_index], v[ix.kv_index], 0.3, 0.0)
    finally:
        backends._torch_varlen.cache_clear()
    torch.testing.assert_close(out, naive_prefix_shared_attention(packed, q, k, v,
                                                                      scale=0.3))
    (a,) = seen
    causal = a.get("window_size") == (-1, 0) or a.get("is_causal") is True
    assert causal and a["enable_gqa"] is True
