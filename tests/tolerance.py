"""The one tolerance rule of the tests (STYLE.md item 3, as flash-attn and CCE test): a fast path
and the obvious reference *in the test dtype* are both compared with a ground truth computed in
float64 (or float32 for bf16 runs), and the fast path may be off by at most twice the
reference's own error plus a tiny floor:

    max |got − truth| ≤ 2 · max |ref − truth| + tiny

A fixed tolerance breaks when the summation order changes with threading; this does not, and
still fails on real errors. The default ``tiny`` is 8 float32 ulps of ``max(1, scale)``, where
``scale`` is the magnitude the value is computed from (by default max |truth|): a fused
kernel's online softmax or a chunked sum can round a few ulps apart from the reference on a case
where the reference happens to be nearly exact. bf16 comparisons on the GPU pass an absolute
``tiny`` (bf16 rounding of the inputs, not float32 noise, is their floor).

(This replaced five copies with different floors: ``1e-6 · (1 + scale)`` in the kernel, loss
and loss-variant tests and ``8 ulp · max(1, scale)`` here and in the model tests; the second is
the stricter for every scale and all of them pass with it.)"""

import torch

EPS32 = torch.finfo(torch.float32).eps
ULPS = 8


def _max_abs(x) -> float:
    x = torch.as_tensor(x).detach().double()
    return float(x.abs().max()) if x.numel() else 0.0


def reference_error_bound(ref, truth, *, scale: float | None = None, tiny: float | None = None,
                          factor: float = 2.0) -> float:
    """``factor · max |ref − truth| + tiny`` (see the module docstring for ``tiny``)."""
    truth = torch.as_tensor(truth).detach().double()
    err_ref = _max_abs(torch.as_tensor(ref).detach().double() - truth)
    if tiny is None:
        tiny = ULPS * EPS32 * max(1.0, _max_abs(truth) if scale is None else scale)
    return factor * err_ref + tiny


def assert_within_reference_error(got, ref, truth, msg: str = "", scale: float | None = None, *,
                                  tiny: float | None = None, factor: float = 2.0) -> None:
    """max |got − truth| ≤ factor · max |ref − truth| + tiny, over all elements; ``got``,
    ``ref`` and ``truth`` are tensors (or numbers) of one shape. ``scale``: the magnitude the
    value is computed from, when it is not the value's own (a loss that is a difference of large
    sums); ``tiny``: an absolute floor instead of the float32 one."""
    truth = torch.as_tensor(truth).detach().double()
    err_got = _max_abs(torch.as_tensor(got).detach().double() - truth)
    err_ref = _max_abs(torch.as_tensor(ref).detach().double() - truth)
    bound = reference_error_bound(ref, truth, scale=scale, tiny=tiny, factor=factor)
    assert err_got <= bound, (f"{msg}: error {err_got:.3g} > {bound:.3g} = {factor} x the "
                              f"reference's {err_ref:.3g} + tiny")
