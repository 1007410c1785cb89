"""plan_bins: native equals the numpy oracle (naive.py); the plan's invariants; bad input."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tpo_fast import _C
from tpo_fast.packing import plan_bins
from tpo_fast.synthetic.packing import synthetic_lengths

FIELDS = ("bin_offsets", "pair_index", "bin_tokens", "bin_cost", "bin_padding", "dropped")
BACKENDS = ("native", "naive")


@st.composite
def instances(draw):
    n = draw(st.integers(1, 48))
    top = draw(st.sampled_from([3, 40, 900]))
    lens = [draw(st.lists(st.integers(1, top), min_size=n, max_size=n)) for _ in range(3)]
    return dict(
        prompt_lens=lens[0], chosen_lens=lens[1], rejected_lens=lens[2],
        token_budget=draw(st.integers(3, 4 * top)),
        world_size=draw(st.integers(1, 9)),
        seed=draw(st.integers(0, 2**64 - 1)),
        epoch=draw(st.integers(0, 5)),
        qk_per_token=draw(st.sampled_from([1, 7, 65536])),
        drop_overlong=draw(st.booleans()),
    )


def _outcome(backend, case):
    try:
        plan = plan_bins(**case, backend=backend)
    except ValueError as exc:
        return ("error", str(exc))
    return tuple((getattr(plan, f).dtype.str, getattr(plan, f).tolist()) for f in FIELDS)


@given(instances())
def test_native_equals_naive(case):
    assert _outcome("native", case) == _outcome("naive", case)


def check_invariants(plan, case):
    p, c, r = (np.asarray(case[k], dtype=np.int64) for k in
               ("prompt_lens", "chosen_lens", "rejected_lens"))
    budget, world = case["token_budget"], case["world_size"]
    tokens = p + c + r
    cost = tokens * case["qk_per_token"] + (p + c) ** 2 + r * (p + r)
    over = np.flatnonzero(tokens > budget)
    assert plan.dropped.tolist() == over.tolist()

    assert plan.num_bins % world == 0 and plan.num_bins >= world
    sizes = np.diff(plan.bin_offsets)
    assert (sizes >= 1).all(), "an empty bin leaves a rank without work"
    real = []
    for b in range(plan.num_bins):
        pairs = plan.bin(b)
        assert plan.bin_tokens[b] == tokens[pairs].sum() <= budget
        assert plan.bin_cost[b] == cost[pairs].sum()
        if plan.bin_padding[b]:
            assert len(pairs) == 1
        else:
            real.extend(pairs.tolist())
    # Every planned pair exactly once; nothing dropped gets planned.
    assert sorted(real) == sorted(set(range(len(p))) - set(over.tolist()))
    # Each step is a run of `world` consecutive bins in cost order (what balances the ranks).
    ranked = np.sort(plan.bin_cost)[::-1].reshape(-1, world)
    steps = np.sort(plan.bin_cost.reshape(-1, world), axis=1)[:, ::-1]
    assert sorted(map(tuple, ranked.tolist())) == sorted(map(tuple, steps.tolist()))


@given(instances())
def test_plan_invariants(case):
    try:
        plan = plan_bins(**case, backend="native")
    except ValueError:
        return  # error cases are covered below and by the equality test
    check_invariants(plan, case)


@pytest.mark.parametrize("world", [1, 3, 8])
def test_invariants_on_video_like_lengths(world):
    p, c, r = synthetic_lengths(3000, seed=world)
    case = dict(prompt_lens=p, chosen_lens=c, rejected_lens=r, token_budget=65536,
                world_size=world, seed=5, epoch=0, qk_per_token=65536, drop_overlong=False)
    plan = plan_bins(**case)
    check_invariants(plan, case)
    assert plan.bin_padding.sum() == 0


def test_deterministic_and_epochs_reshuffle_bins_only():
    p, c, r = synthetic_lengths(2000, seed=1)
    a = plan_bins(p, c, r, 65536, 4, seed=9)
    b = plan_bins(p, c, r, 65536, 4, seed=9)
    e1 = plan_bins(p, c, r, 65536, 4, seed=9, epoch=1)
    for f in FIELDS:
        assert np.array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(a.pair_index, e1.pair_index)  # a new order of steps
    def contents(plan):
        return sorted(tuple(sorted(plan.bin(i).tolist())) for i in range(plan.num_bins))

    assert contents(a) == contents(e1)  # the same micro-batches


def test_split_gives_every_rank_a_pair():
    # Three small pairs fit in one bin; two ranks need two bins: split, no padding.
    plan = plan_bins([5, 4, 3], [1, 1, 1], [1, 1, 1], token_budget=100, world_size=2)
    assert plan.num_bins == 2 and not plan.bin_padding.any()
    assert sorted(map(sorted, (plan.bin(0).tolist(), plan.bin(1).tolist()))) == [[0, 2], [1]]


def test_padding_when_no_bin_can_split():
    # Each pair needs more than half the budget: 3 bins for 2 ranks -> one padding bin that
    # repeats the cheapest pair.
    plan = plan_bins([60, 70, 80], [1, 1, 1], [1, 1, 1], token_budget=100, world_size=2)
    assert plan.num_bins == 4
    assert plan.bin_padding.sum() == 1
    assert plan.bin(int(np.flatnonzero(plan.bin_padding)[0])).tolist() == [0]
    assert plan.summary()["padding_bins"] == 1


def test_step_and_rank_views():
    p, c, r = synthetic_lengths(500, seed=2)
    plan = plan_bins(p, c, r, 65536, 4)
    for rank in range(4):
        for s, pairs, padding in plan.for_rank(rank):
            assert np.array_equal(pairs, plan.step(s)[rank])
            assert padding == plan.bin_padding[s * 4 + rank]
    with pytest.raises(IndexError):
        plan.step(plan.num_steps)
    with pytest.raises(IndexError):
        next(plan.for_rank(4))


def test_drop_overlong_is_counted_in_summary():
    plan = plan_bins([10, 500, 10, 20], [1, 1, 1, 1], [1, 1, 1, 1], token_budget=100,
                     drop_overlong=True)
    s = plan.summary()
    assert plan.dropped.tolist() == [1]
    assert s["dropped_overlong"] == 1 and s["planned"] == 3 and s["pairs"] == 4


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt_lens=[5, 0]), r"pair 1: prompt length 0"),
        (dict(chosen_lens=[1, -3]), r"pair 1: chosen length -3"),
        (dict(rejected_lens=[0, 2]), r"pair 0: rejected length 0"),
        (dict(prompt_lens=[5, 95]), r"pair 1 \(prompt 95 \+ chosen 2 \+ rejected 2 tokens\) "
                                    r"exceeds token_budget 64"),
        (dict(world_size=3), r"2 pairs to plan .* for 3 ranks"),
        (dict(prompt_lens=[5, 95], world_size=2, drop_overlong=True),
         r"1 pairs to plan \(1 dropped .*\) for 2 ranks"),
        (dict(chosen_lens=[2, 2, 2]), r"chosen_lens has 3 entries but prompt_lens has 2"),
        (dict(prompt_lens=[[5, 6]]), r"prompt_lens must be 1-D"),
        (dict(prompt_lens=[5.0, 6.0]), r"prompt_lens must hold integers"),
        (dict(prompt_lens=[], chosen_lens=[], rejected_lens=[]), r"no pairs given"),
        (dict(token_budget=0), r"token_budget must be in"),
        (dict(world_size=0), r"world_size must be >= 1"),
        (dict(qk_per_token=0), r"qk_per_token must be in"),
    ],
)
def test_bad_input_names_the_problem(backend, kwargs, message):
    args = dict(prompt_lens=[5, 6], chosen_lens=[2, 2], rejected_lens=[2, 2], token_budget=64)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        plan_bins(**args, backend=backend)


def test_native_binding_checks_its_own_inputs():
    ok = np.array([4, 5], dtype=np.int64)
    call = lambda p=ok, c=ok, r=ok, budget=64, world=1: _C.plan_bins(p, c, r, budget, world, 0, 0,
                                                                      65536, False)
    assert call()["bin_offsets"][-1] == 2
    assert call(p=np.array([4, 5], dtype=np.int32))["bin_tokens"].sum() == 27  # any int dtype
    with pytest.raises(ValueError, match="must hold integers"):
        call(p=np.array([4.0, 5.0]))
    with pytest.raises(ValueError, match="must be 1-D"):
        call(p=ok.reshape(1, 2))
    with pytest.raises(ValueError, match="has 3 entries"):
        call(r=np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="pair 0: prompt length -1"):
        call(p=np.array([-1, 5]))
    with pytest.raises(ValueError, match="token_budget must be in"):
        call(budget=2**40)
    assert issubclass(_C.PackingInputError, ValueError)


def test_bad_argument_types():
    with pytest.raises(TypeError, match="world_size must be an int"):
        plan_bins([5], [1], [1], 64, world_size=1.5)
    with pytest.raises(ValueError, match="seed and epoch"):
        plan_bins([5], [1], [1], 64, seed=-1)
    with pytest.raises(ValueError, match="unknown packing backend"):
        plan_bins([5], [1], [1], 64, backend="fast")
