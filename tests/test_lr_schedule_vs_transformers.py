"""Our LR multiplier (``tpo_fast.train.schedule.lr_lambda``) against ``transformers.get_scheduler``
step by step: why we keep ours.

After warmup the two are the same function (cosine, linear, constant). During warmup they
differ: transformers ramps ``step / warmup``, so the first optimizer step runs at LR 0 (a wasted
step of the about 31 that the paper's 2k pairs make at global batch 64); ours ramps
``(step + 1) / (warmup + 1)``. Ours is exactly transformers' schedule with one more warmup step
and one more step in all, read one step later, which the last assertion pins down.
"""

from __future__ import annotations

import pytest
import torch

from tpo_fast.train.schedule import lr_lambda

transformers = pytest.importorskip("transformers")

HF_NAME = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def hf_factor(kind: str, warmup: int, total: int):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = transformers.get_scheduler(HF_NAME[kind], opt, num_warmup_steps=warmup,
                                       num_training_steps=total)
    return sched.lr_lambdas[0]


@pytest.mark.parametrize("total, ratio, kind", [
    (100, 0.1, "cosine"), (31, 0.1, "cosine"), (37, 0.1, "linear"), (20, 0.25, "constant"),
    (10, 0.0, "cosine"), (10, 0.0, "linear"), (7, 0.3, "cosine")])
def test_equal_after_warmup_and_one_step_shifted_during_it(total, ratio, kind):
    ours = lr_lambda(total, ratio, kind)
    warmup = int(round(ratio * total))
    hf = hf_factor(kind, warmup, total)
    for step in range(warmup, total):
        assert ours(step) == pytest.approx(hf(step), abs=1e-12), step
    if warmup:
        assert hf(0) == 0.0 and ours(0) == pytest.approx(1 / (warmup + 1))
        assert all(ours(s) > hf(s) for s in range(warmup))
    shifted = hf_factor(kind, warmup + 1, total + 1)
    for step in range(total):
        assert ours(step) == pytest.approx(shifted(step + 1), abs=1e-12), step
