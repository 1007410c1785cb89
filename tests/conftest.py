import os

import pytest
import torch
from hypothesis import settings


def _test_device() -> str:
    """The device the kernel tests run their kernels on: ``TPO_FAST_TEST_DEVICE`` (cpu | cuda);
    unset, CUDA when a GPU is present, else the CPU."""
    wanted = os.environ.get("TPO_FAST_TEST_DEVICE", "").strip().lower()
    if wanted not in ("", "cpu", "cuda"):
        raise pytest.UsageError(f"TPO_FAST_TEST_DEVICE must be cpu or cuda, got {wanted!r}")
    if wanted == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("TPO_FAST_TEST_DEVICE=cuda, but torch sees no CUDA device")
    return wanted or ("cuda" if torch.cuda.is_available() else "cpu")


TEST_DEVICE = _test_device()

# `make test` runs two pytest-xdist workers on the 2-core machine: one torch thread each, so
# the two do not fight over the cores (multi-process tests start their own ranks).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

# On the CPU, Triton kernels run under the interpreter; it must be set before triton loads.
if TEST_DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Property tests: no per-example deadline (CI machines are slow and shared); a fixed budget.
settings.register_profile("default", deadline=None, max_examples=150)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_collection_modifyitems(config, items):
    cuda = torch.cuda.is_available()
    if not cuda:
        gpu_skip = pytest.mark.skip(reason="needs a CUDA device")
    elif TEST_DEVICE == "cpu":  # the interpreter is on: real CUDA kernels cannot run
        gpu_skip = pytest.mark.skip(reason="TPO_FAST_TEST_DEVICE=cpu")
    else:
        gpu_skip = None
    # two gloo processes would see the GPU and start as two NCCL ranks on one device
    mp_skip = pytest.mark.skip(reason="2-process gloo test: CPU machines only (a GPU is present)")
    for item in items:
        if gpu_skip is not None and "gpu" in item.keywords:
            item.add_marker(gpu_skip)
        if cuda and "multiprocess_cpu" in item.keywords:
            item.add_marker(mp_skip)


def _move(value, device):
    if torch.is_tensor(value):
        return value.to(device)  # differentiable: gradients reach the caller's tensor
    if isinstance(value, (list, tuple)):
        return type(value)(_move(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _move(v, device) for k, v in value.items()}
    return value


def _first_tensor_device(args, kwargs):
    for value in (*args, *kwargs.values()):
        if torch.is_tensor(value):
            return value.device
    return None


def on_test_device(fn, impls=None):
    """``fn`` run on ``TEST_DEVICE``: tensor arguments (also inside lists, tuples and dicts) are
    moved there with ``.to`` (so gradients flow back to the caller's tensors) and tensor
    results are moved back to the device of the first tensor argument. ``impls``: move only
    calls whose ``impl`` keyword is one of them (the others run where their inputs are). On the
    CPU it is ``fn`` itself. Kernel tests wrap the kernel entry points with it and keep building
    inputs and ground truths on the CPU."""
    if TEST_DEVICE == "cpu":
        return fn

    def wrapped(*args, **kwargs):
        if impls is not None and kwargs.get("impl") not in impls:
            return fn(*args, **kwargs)
        home = _first_tensor_device(args, kwargs)
        out = fn(*_move(args, TEST_DEVICE), **_move(kwargs, TEST_DEVICE))
        return out if home is None else _move(out, home)

    wrapped.__wrapped__ = fn
    return wrapped


@pytest.fixture(scope="session")
def pairs(tmp_path_factory):
    """The synthetic pairs file most training tests use: 48 pairs over 8 videos, seed 0
    (tpo_fast.synthetic.pairs.make_pairs), written once per session; tests must not modify it
    (copy it to tmp_path first)."""
    from tpo_fast.synthetic.pairs import make_pairs

    return make_pairs(tmp_path_factory.mktemp("pairs"), n_pairs=48, n_videos=8, seed=0)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """``tiny_folder(family, **options)``: ``save_tiny_model(family, folder, **options)``
    written once per session for each (family, options) and shared (tests must not modify it)."""
    from tpo_fast.models.tiny_folders import save_tiny_model

    made = {}

    def get(family: str, **options):
        key = (family, tuple(sorted(options.items())))
        if key not in made:
            made[key] = save_tiny_model(family, tmp_path_factory.mktemp(family) / "model",
                                        **options)
        return made[key]

    return get


@pytest.fixture(scope="session")
def test_device() -> str:
    """``TEST_DEVICE``: "cpu" or "cuda" (see ``TPO_FAST_TEST_DEVICE``)."""
    return TEST_DEVICE


def _nan_filled(factory):
    def filled(*args, **kwargs):
        out = factory(*args, **kwargs)
        if out.is_floating_point():
            out.fill_(float("nan"))
        elif out.dtype in (torch.int8, torch.int16, torch.int32, torch.int64):
            out.fill_(torch.iinfo(out.dtype).max)
        return out

    return filled


@pytest.fixture
def nan_empty(monkeypatch):
    """torch.empty / empty_like / empty_strided return NaN-filled floats (integers: their
    maximum), so any output element a kernel never writes shows up in the comparison (fla)."""
    for name in ("empty", "empty_like", "empty_strided"):
        monkeypatch.setattr(torch, name, _nan_filled(getattr(torch, name)))
