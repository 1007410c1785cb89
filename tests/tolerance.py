"""Tolerances from the reference's own error (STYLE.md item 3): a fast path and the obvious
float32 reference are both compared with a float64 ground truth, and the fast path may be off
by at most twice the reference's error plus a floor of 8 float32 ulps of the values' scale (a
fused kernel's online softmax can round a few ulps apart from the reference on a case where
the reference happens to be nearly exact). A fixed fp32 tolerance breaks when
the summation order changes with threading; this does not, and still fails on real errors."""

import torch

EPS32 = torch.finfo(torch.float32).eps


def assert_within_reference_error(got, ref, truth, *, factor: float = 2.0,
                                  floor: float = 8 * EPS32, msg: str = "") -> None:
    """max |got − truth| ≤ factor · max |ref − truth| + floor · max(1, max |truth|)."""
    truth = truth.double()
    scale = max(1.0, float(truth.abs().max())) if truth.numel() else 1.0
    err_got = float((got.double() - truth).abs().max()) if truth.numel() else 0.0
    err_ref = float((ref.double() - truth).abs().max()) if truth.numel() else 0.0
    assert err_got <= factor * err_ref + floor * scale, (
        f"{msg}: error {err_got:.3g} vs the reference's {err_ref:.3g} (allowed "
        f"{factor} x + {floor * scale:.3g})")
