"""PairPacker (tpo_fast/data/packer.py) against the obvious slow path.

The packer's batch must equal, field by field, ``pack_pairs`` on the same token lists with the
family's own position ids (``adapter.position_ids_fn``) — what ``PreferenceModel.pack`` did —
for token ids given as lists, numpy arrays or tensors (a tokenised dataset's rows), for raw
examples tokenised by hand with the adapter, and for ``TPODataset``'s decoded bins.
"""

import json
from dataclasses import fields

import numpy as np
import pytest
import torch

from tpo_fast.data.packer import PairPacker
from tpo_fast.models import adapter_for
from tpo_fast.models.tiny import random_video, tiny_model, tiny_tokenizer
from tpo_fast.packing import PackedBatch, pack_pairs

QUESTIONS = ["what colour was the circle ?", "how many shapes appeared ?",
             "which shape moved left ?"]
ANSWERS = ["the circle was red", "three shapes", "the square moved left", "a blue star"]


def assert_same_batch(got: PackedBatch, want: PackedBatch) -> None:
    for f in fields(PackedBatch):
        a, b = getattr(got, f.name), getattr(want, f.name)
        if isinstance(b, torch.Tensor):
            assert isinstance(a, torch.Tensor) and a.dtype == b.dtype, f.name
            assert torch.equal(a, b), f.name
        elif f.name == "videos":
            assert len(a) == len(b)
            for va, vb in zip(a, b):
                assert va.keys() == vb.keys()
                for k in vb:
                    assert (torch.equal(va[k], vb[k]) if torch.is_tensor(vb[k])
                            else va[k] == vb[k]), k
        else:
            assert a == b, f.name


def tokenised_pairs(family, n=3, seed=0):
    tokenizer = tiny_tokenizer(family)
    model = tiny_model(family, tokenizer, seed=seed)
    adapter = adapter_for(model)
    step = 2 if family.startswith("qwen") else 1  # Qwen-VL: frames in temporal pairs
    videos = [random_video(family, model.config, step * (1 + i % 2), seed=i) for i in range(n)]
    prompts = [adapter.prompt_ids(tokenizer, QUESTIONS[i % 3], v) for i, v in enumerate(videos)]
    # responses of 1 token (a pair whose response is one token) up to several
    chosen = [adapter.response_ids(tokenizer, ANSWERS[i % 4]) for i in range(n)]
    rejected = [[7]] + [adapter.response_ids(tokenizer, ANSWERS[(i + 1) % 4])
                        for i in range(1, n)]
    return adapter, tokenizer, prompts, chosen, rejected, videos


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision"])  # M-RoPE [3, T]; 1-D [T]
def test_pack_equals_pack_pairs_with_the_adapters_positions(family):
    adapter, _, prompts, chosen, rejected, videos = tokenised_pairs(family)
    ref = [[-1.5, -2.0], [-3.0, -0.5], [-4.0, -4.5]]
    want = pack_pairs(prompts, chosen, rejected, videos=videos, ref_logps=ref, pair_ids=[5, 0, 2],
                      is_padding=True, position_ids_fn=adapter.position_ids_fn(prompts, videos))
    assert want.position_ids.ndim == (2 if family == "qwen2_vl" else 1)
    packer = PairPacker(adapter)  # no tokenizer: already tokenised rows need none
    got = packer.pack(prompts, chosen, rejected, videos, ref, pair_ids=[5, 0, 2], is_padding=True)
    assert_same_batch(got, want)
    # rows as a tokenised dataset holds them: int tensors and numpy arrays
    got = packer.pack([torch.tensor(p) for p in prompts], [np.asarray(c) for c in chosen],
                      [torch.tensor(r) for r in rejected], tuple(videos), torch.tensor(ref),
                      pair_ids=torch.tensor([5, 0, 2]), is_padding=True)
    assert_same_batch(got, want)
    # one pair alone
    one = packer.pack(prompts[:1], chosen[:1], rejected[:1], videos[:1])
    assert_same_batch(one, pack_pairs(prompts[:1], chosen[:1], rejected[:1], videos=videos[:1],
                                      position_ids_fn=adapter.position_ids_fn(prompts[:1],
                                                                              videos[:1])))


def test_pack_examples_equals_tokenising_by_hand():
    adapter, tok, _, _, _, videos = tokenised_pairs("qwen2_vl")
    examples = [{"question": QUESTIONS[i], "video": v, "chosen": ANSWERS[i],
                 "rejected": ANSWERS[i + 1], "ref_logps": [-1.0 - i, -2.0]}
                for i, v in enumerate(videos)]
    examples[1]["system"] = "answer in one word ."
    packer = PairPacker(adapter, tok, system_prompt="be brief .")
    systems = ["be brief .", "answer in one word .", "be brief ."]
    prompts = [adapter.prompt_ids(tok, e["question"], e["video"], system=s)
               for e, s in zip(examples, systems)]
    assert prompts[0] != adapter.prompt_ids(tok, QUESTIONS[0], videos[0])  # the system counts
    chosen = [adapter.response_ids(tok, e["chosen"]) for e in examples]
    rejected = [adapter.response_ids(tok, e["rejected"]) for e in examples]
    want = pack_pairs(prompts, chosen, rejected, videos=videos,
                      ref_logps=[e["ref_logps"] for e in examples],
                      position_ids_fn=adapter.position_ids_fn(prompts, videos))
    assert_same_batch(packer.pack_examples(examples), want)
    # ref_logps only when every example has it
    del examples[2]["ref_logps"]
    assert packer.pack_examples(examples).ref_logps is None


def test_bad_batches_are_clear_errors():
    adapter, tok, prompts, chosen, rejected, videos = tokenised_pairs("llava_onevision", n=2)
    total = sum(len(p) + len(c) + len(r) for p, c, r in zip(prompts, chosen, rejected))
    PairPacker(adapter, token_budget=total).pack(prompts, chosen, rejected, videos)  # fits
    with pytest.raises(ValueError, match=f"packs {total} tokens, over the packer's "
                                         f"token_budget={total - 1}"):
        PairPacker(adapter, token_budget=total - 1).pack(prompts, chosen, rejected, videos)
    with pytest.raises(ValueError, match="token_budget must be a positive"):
        PairPacker(adapter, token_budget=0)
    with pytest.raises(ValueError, match="got 2 prompts, 2 chosen and 2 rejected responses "
                                         "and 1 videos"):
        PairPacker(adapter).pack(prompts, chosen, rejected, videos[:1])
    with pytest.raises(ValueError, match="has no tokenizer"):
        PairPacker(adapter).pack_examples([{"question": "what ?", "video": videos[0],
                                            "chosen": "red", "rejected": "blue"}])
    with pytest.raises(ValueError, match="pair 1: the chosen response holds a video token"):
        PairPacker(adapter).pack(prompts, [chosen[0], [adapter.video_token_id]], rejected, videos)


def test_dataset_bin_is_the_packer_on_its_tokens(tmp_path):
    """``TPODataset.batch`` (decode, tokenise, pack) equals pack_pairs on the adapter's own
    prompt/response ids of the decoded videos, with the ref_logps of the file."""
    from tpo_fast.config import DataConfig, DecodeConfig
    from tpo_fast.data.dataset import TPODataset
    from tpo_fast.data.pairs import read_pairs
    from tpo_fast.synthetic.videos import write_video

    rng = np.random.default_rng(0)
    for v in range(2):
        write_video(tmp_path / f"v{v}.mp4", rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8))
    rows = [{"video": f"v{i % 2}.mp4", "prompt": QUESTIONS[i], "chosen": ANSWERS[i],
             "rejected": ANSWERS[3 - i], "ref_logps": [-1.0 - i, -2.5]} for i in range(3)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    records, _ = read_pairs(tmp_path / "pairs.jsonl")
    tok = tiny_tokenizer("llava_onevision")
    adapter = adapter_for(tiny_model("llava_onevision", tok))
    cfg = DataConfig(frames=4, system_prompt="be brief .")
    dataset = TPODataset(records, PairPacker(adapter, tok), cfg,
                         DecodeConfig(backend="pyav", workers=1), device="cpu")
    try:
        ids = [2, 0]
        got = dataset.batch(ids, is_padding=False)
        videos = [dataset.video_inputs(i) for i in ids]
        prompts = [adapter.prompt_ids(tok, rows[i]["prompt"], v, system="be brief .")
                   for i, v in zip(ids, videos)]
        assert list(dataset.lengths()[0][ids]) == [len(p) for p in prompts]
        want = pack_pairs(prompts, [adapter.response_ids(tok, rows[i]["chosen"]) for i in ids],
                          [adapter.response_ids(tok, rows[i]["rejected"]) for i in ids],
                          videos=videos, ref_logps=[rows[i]["ref_logps"] for i in ids],
                          pair_ids=ids,
                          position_ids_fn=adapter.position_ids_fn(prompts, videos))
        assert_same_batch(got, want)
    finally:
        dataset.close()
