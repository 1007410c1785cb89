"""The reference and its vision once (in-process): the tower replay equals recomputing the tower
for every family, a live reference in training replays instead of recomputing, LongVA is built
partitioned under ZeRO-3, and the stock-forward helper is the one slow path."""

import pytest
import torch
from helpers import TINY

from tpo_fast.models import PreferenceModel
from tpo_fast.models.tiny import random_video, tiny_model, tiny_tokenizer
from tpo_fast.train.reference import TowerReplay, frozen_vision_modules

HAND_WRITTEN = ["llava_onevision", "llava_next_video", "qwen2_vl", "qwen2_5_vl", "qwen3_vl",
                "longva"]


def _videos(family, config):
    return [random_video(family, config, frames, seed=k) for k, frames in enumerate((2, 4))]


@pytest.mark.parametrize("family", HAND_WRITTEN)
def test_tower_replay_equals_recomputing(family):
    tokenizer = tiny_tokenizer(family)
    policy = PreferenceModel(tiny_model(family, tokenizer, seed=3), attention_backend="sdpa")
    reference = PreferenceModel(tiny_model(family, tokenizer, seed=3), attention_backend="sdpa",
                                train_projector=False)
    videos = _videos(family, policy.model.config)
    names = frozen_vision_modules(policy)
    assert names  # something of every tower is frozen and outside the projector
    projector = {id(p) for p in policy.adapter.projector_parameters()}
    tower = policy.adapter.vision_tower()
    for name in names:  # nothing replayed trains or belongs to the projector
        module = tower.get_submodule(name) if name else tower
        assert not any(p.requires_grad or id(p) in projector for p in module.parameters())

    expected = policy.encode_videos(videos)
    replay = TowerReplay(reference.adapter.vision_tower(), tower, names)
    with replay.record():
        reference.encode_videos(videos)
    recorded = sum(len(q) for q in replay.outputs.values())
    with replay.replay():
        got = policy.encode_videos(videos)
    assert replay.calls == recorded > 0
    flat = lambda f: torch.cat([t.flatten() for t in _tensors(f)])
    assert torch.equal(flat(got), flat(expected))
    # the projector still trains from replayed tower outputs
    flat(got).square().sum().backward()
    assert all(p.grad is not None for p in policy.adapter.projector_parameters()
               if p.requires_grad)


def _tensors(features):
    if torch.is_tensor(features):
        return [features]
    if isinstance(features, (list, tuple)):
        return [t for f in features for t in _tensors(f)]
    return [t for v in vars(features).values() if v is not None for t in _tensors(v)]


def test_replay_refuses_calls_it_did_not_record():
    family = "llava_onevision"
    tokenizer = tiny_tokenizer(family)
    policy = PreferenceModel(tiny_model(family, tokenizer), attention_backend="sdpa")
    reference = PreferenceModel(tiny_model(family, tokenizer), attention_backend="sdpa")
    replay = TowerReplay(reference.adapter.vision_tower(), policy.adapter.vision_tower(),
                         frozen_vision_modules(policy))
    videos = _videos(family, policy.model.config)
    with replay.record():
        reference.encode_videos(videos[:1])
    with pytest.raises(RuntimeError, match="vision replay"), replay.replay():
        policy.encode_videos(videos)  # other shapes than recorded
    with replay.record():
        reference.encode_videos(videos)
    with pytest.raises(RuntimeError, match="never replayed"), replay.replay():
        pass


def test_live_reference_in_training_replays_the_tower(tmp_path):

    from tpo_fast.config import load_config
    from tpo_fast.synthetic.pairs import make_pairs
    from tpo_fast.train.loop import Trainer

    pairs = make_pairs(tmp_path / "pairs", n_pairs=12, n_videos=4)
    trainer = Trainer(load_config(TINY, [
        f"data.train={pairs}", f"run.output_dir={tmp_path / 'run'}", "run.progress=false",
        "run.tensorboard=false", "run.plot=false", "optim.max_steps=2", "loss.reference=model",
        "optim.global_batch_size=6"]))
    replay = trainer.engine.module.replay
    assert replay is not None and trainer.ref_scorer is not None
    calls = []
    for module in replay.target.values():  # the policy's own tower forwards: never run
        original = module.forward
        module.forward = lambda *a, _f=original, **k: calls.append(1) or _f(*a, **k)
    trainer.run()
    assert replay.calls >= 2 and not calls


def test_longva_is_built_partitioned_under_zero3(tmp_path):
    import deepspeed

    from tpo_fast.models import load_longva
    from tpo_fast.models.tiny_folders import save_tiny_model
    from tpo_fast.train.setup import init_distributed

    init_distributed()  # a group of one (as a plain `tpo-fast train` makes)
    folder = save_tiny_model("longva", tmp_path / "longva")
    plain = load_longva(folder)
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
    parted = load_longva(folder, zero3_config=config)
    params = dict(parted.named_parameters())
    assert params and all(hasattr(p, "ds_id") and p.numel() == 0 for p in params.values())
    with deepspeed.zero.GatheredParameters(list(params.values())):
        for name, value in plain.named_parameters():
            torch.testing.assert_close(params[name].data, value.data, rtol=0, atol=0, msg=name)


def test_stock_forward_helper_matches_log_softmax_by_hand():
    from tpo_fast.models.stock import stock_inputs, stock_response_logps

    family = "qwen2_vl"
    tokenizer = tiny_tokenizer(family)
    model = tiny_model(family, tokenizer)
    video = _videos(family, model.config)[0]
    prompt = PreferenceModel(model, attention_backend="sdpa").adapter.prompt_ids(
        tokenizer, "what colour ?", video)
    response = [30, 31, 32]
    got = stock_response_logps(model, prompt, response, video)
    row = torch.tensor([prompt + response])
    kwargs = stock_inputs(model, row, video)
    assert torch.equal(kwargs["mm_token_type_ids"][0, :len(prompt)] == 2,
                       torch.tensor(prompt) == model.config.video_token_id)
    logits = model(**kwargs).logits[0].double()
    want = torch.stack([logits[len(prompt) - 1 + i].log_softmax(-1)[t]
                        for i, t in enumerate(response)])
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)


def test_a_trained_tower_is_not_replayed():
    """With the tower training (model.train_vision_tower), nothing is replayed: a replayed
    activation between two trained layers would cut the gradient to the first (found by
    tests/test_trl_dropin.py::test_video_pairs_equal_tpo_fast_train: the vision blocks' fc1 and
    norm2 never moved)."""
    tokenizer = tiny_tokenizer("qwen2_vl")
    policy = PreferenceModel(tiny_model("qwen2_vl", tokenizer, seed=3), attention_backend="sdpa",
                             train_vision_tower=True)
    assert frozen_vision_modules(policy) == []
    frozen = PreferenceModel(tiny_model("qwen2_vl", tokenizer, seed=3), attention_backend="sdpa")
    assert frozen_vision_modules(frozen)
