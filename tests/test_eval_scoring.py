"""Option log-likelihood scoring and ``evaluate`` on tiny random models and tiny real videos.

The packed path (options as prefix-sharing pairs) must equal one stock HF forward per option;
``evaluate`` must turn known option scores / known generations into the right accuracy table
and count decode failures and unparseable answers.
"""

import json

import numpy as np
import pytest
import torch

import tpo_fast.curate.generation as generation
import tpo_fast.eval.runner as runner
from tpo_fast.config import DecodeConfig
from tpo_fast.synthetic.videos import write_video
from tpo_fast.eval import MCQuestion, evaluate, extract_choice, format_table
from tpo_fast.eval.records import LETTERS
from tpo_fast.eval.scoring import (
    answer_texts,
    choose,
    format_prompt,
    option_logps,
    option_pairs,
    stock_option_logps,
)
from tpo_fast.models import PreferenceModel, adapter_for
from tpo_fast.models.tiny import tiny_model, tiny_tokenizer
from tpo_fast.synthetic.videos import write_video
from tpo_fast.video import load_video_inputs

QIDS = ["kilo", "lima", "mike", "nova", "oscar", "papa", "romeo"]  # one tokenizer word each
WORDS = list(LETTERS[:5]) + QIDS + ["cube", "ball", "cone", "ring", "disc"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval_videos")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        paths.append(folder / f"clip{i}.mp4")
        write_video(paths[-1], rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8), fps=4)
    (folder / "corrupt.mp4").write_bytes(b"not a video")
    return paths, folder


def question(i: int, video, n_options: int = 4, answer: int = 0, task: str = "localized/colour",
             duration: float | None = 10.0) -> MCQuestion:
    return MCQuestion(qid=QIDS[i], video=video, question=f"{QIDS[i]} what shape was red ?",
                      options=["cube", "ball", "cone", "ring", "disc"][:n_options], answer=answer,
                      task_type=task, duration_group=None if duration is None else
                      "0-15s" if duration <= 15 else "15-60s",
                      source=f"test:{i}", duration=duration)


def test_option_pairs_and_prompt():
    assert option_pairs(1) == [(0, 0)]
    assert option_pairs(4) == [(0, 1), (2, 3)]
    assert option_pairs(5) == [(0, 1), (2, 3), (4, 4)]
    q = question(0, "v.mp4", n_options=3)
    assert format_prompt(q).splitlines()[1:4] == ["A. cube", "B. ball", "C. cone"]
    assert answer_texts(q) == ["A", "B", "C"]
    assert answer_texts(q, "letter_text")[2] == "C. cone"
    with pytest.raises(ValueError, match="unknown answer format"):
        answer_texts(q, "text")


def test_choose_length_normalisation():
    scores = torch.tensor([-3.0, -4.0])  # summed; option 1 has twice the tokens
    assert choose(scores, [1, 4], length_normalize=False) == 0
    assert choose(scores, [1, 4], length_normalize=True) == 1


@pytest.mark.parametrize("family, answer_format", [("qwen2_vl", "letter"),
                                                   ("llava_onevision", "letter_text")])
def test_packed_scores_equal_stock_forward(videos, family, answer_format):
    """Questions with 2, 3 (odd: the last option is duplicated), 4 and 5 options in one packed
    batch score every option as a per-option stock forward does."""
    paths, _ = videos
    tokenizer = tiny_tokenizer(family, words=WORDS)
    model = tiny_model(family, tokenizer, seed=1)
    adapter = adapter_for(model)
    stock = {}
    prompts, options, inputs = [], [], []
    for i, k in enumerate((2, 3, 4, 5)):
        video, _ = load_video_inputs(paths[i % 3], model.config, num_frames=4)
        q = question(i, paths[i % 3], n_options=k)
        prompts.append(adapter.prompt_ids(tokenizer, format_prompt(q), video))
        options.append([adapter.response_ids(tokenizer, t) for t in answer_texts(q, answer_format)])
        inputs.append(video)
        stock[i] = stock_option_logps(model, prompts[-1], options[-1], video)
    packed = option_logps(PreferenceModel(model), prompts, options, inputs)
    for i, k in enumerate((2, 3, 4, 5)):
        assert packed[i].shape == (k,)
        torch.testing.assert_close(packed[i], stock[i], rtol=1e-4, atol=1e-4)
        assert len(set(stock[i].tolist())) == k  # the options really score differently


def fake_scores(tokenizer, table):
    """An ``option_logps`` that returns ``table[qid]`` for the question whose prompt names it."""
    calls = []

    def scorer(preference_model, prompts, options, videos):
        calls.append(len(prompts))
        out = []
        for prompt, opts in zip(prompts, options):
            qid = next(w for w in tokenizer.convert_ids_to_tokens(prompt) if w in table)
            assert len(table[qid]) == len(opts)
            out.append(torch.tensor(table[qid]))
        return out

    return scorer, calls


def test_evaluate_accuracy_table_from_known_scores(videos, monkeypatch, capsys):
    paths, folder = videos
    tokenizer = tiny_tokenizer("qwen2_vl", words=WORDS)
    model = tiny_model("qwen2_vl", tokenizer)
    questions = [
        question(0, paths[0], answer=0),                                   # right
        question(1, paths[0], answer=1),                                   # wrong
        question(2, paths[1], answer=2, n_options=3, duration=40.0),       # right
        question(3, folder / "missing.mp4", answer=0),                     # decode failure
        question(4, paths[1], answer=3, task="comprehensive/count", duration=None),  # right
        question(5, folder / "corrupt.mp4", answer=0, task="comprehensive/count"),  # failure
        question(6, paths[2], answer=1, task="comprehensive/count", duration=40.0),  # wrong
    ]
    table = {"kilo": [-1, -2, -3, -4], "lima": [-1, -2, -3, -4], "mike": [-3, -2, -1],
             "oscar": [-4, -3, -2, -1], "romeo": [-1, -5, -5, -5]}
    scorer, calls = fake_scores(tokenizer, table)
    monkeypatch.setattr(runner, "option_logps", scorer)
    trainable = [p.requires_grad for p in model.parameters()]
    results = evaluate(model, tokenizer, questions, method="loglik", frames=4, batch_size=2,
                       progress=False)
    assert calls == [2, 2, 1]  # 5 decodable questions in batches of 2
    assert [p.requires_grad for p in model.parameters()] == trainable  # flags restored
    r = results["loglik"]
    assert (r["correct"], r["total"], r["unparseable"]) == (3, 5, 0)
    assert r["by_task_type"] == {
        "comprehensive/count": {"accuracy": 0.5, "correct": 1, "total": 2, "unparseable": 0},
        "localized/colour": {"accuracy": 2 / 3, "correct": 2, "total": 3, "unparseable": 0}}
    assert r["by_duration_group"] == {
        "0-15s": {"accuracy": 0.5, "correct": 1, "total": 2, "unparseable": 0},
        "15-60s": {"accuracy": 0.5, "correct": 1, "total": 2, "unparseable": 0}}  # q4: no group
    assert results["decode_failures"] == 2 and results["n_evaluated"] == 5
    assert sorted(q for s in results["skipped"] for q in s["qids"]) == ["nova", "papa"]
    assert [p["loglik"]["prediction"] for p in results["predictions"]] == [0, 0, 2, 3, 0]
    json.dumps(results)  # serialisable as is
    table_text = format_table(results)
    assert "task localized/colour" in table_text and "66.7%" in table_text
    assert "2 skipped" in table_text


def test_indistinguishable_options_are_reported(videos, monkeypatch):
    """A vocabulary without the option letters makes every letter answer "<unk>": counted and
    reported, since loglik would silently pick option A."""
    paths, _ = videos
    tokenizer = tiny_tokenizer("qwen2_vl", words=QIDS + ["cube", "ball", "cone", "ring"])
    model = tiny_model("qwen2_vl", tokenizer)
    scorer, _ = fake_scores(tokenizer, {"kilo": [0, 0, 0, 0], "lima": [0, 0, 0, 0]})
    monkeypatch.setattr(runner, "option_logps", scorer)
    questions = [question(i, paths[0]) for i in range(2)]
    for answer_format, tied in (("letter", 2), ("letter_text", 0)):
        results = evaluate(model, tokenizer, questions, frames=2, answer_format=answer_format,
                           progress=False)
        assert results["loglik"]["tied_options"] == tied
        assert ("tokenize identically" in format_table(results)) == bool(tied)


def test_generate_counts_unparseable_answers(videos, monkeypatch):
    paths, _ = videos
    tokenizer = tiny_tokenizer("llava_onevision", words=WORDS)
    model = tiny_model("llava_onevision", tokenizer)
    answers = {"kilo": "The answer is A.", "lima": "(C)", "mike": "no idea", "nova": "ball"}

    def fake_generate(model, tokenizer, prompts, videos, **kwargs):
        assert kwargs["do_sample"] is False
        return [answers[next(w for w in tokenizer.convert_ids_to_tokens(p) if w in answers)]
                for p in prompts]

    monkeypatch.setattr(generation, "generate_batch", fake_generate)
    questions = [question(i, paths[i % 3], answer=a) for i, a in enumerate((0, 2, 1, 0))]
    results = evaluate(model, tokenizer, questions, method="generate", frames=3, batch_size=3,
                       progress=False)
    g = results["generate"]
    assert (g["correct"], g["total"], g["unparseable"]) == (2, 4, 1)
    assert "loglik" not in results
    assert [p["generate"]["prediction"] for p in results["predictions"]] == [0, 2, None, 1]


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision"])
def test_evaluate_both_end_to_end(videos, family):
    """Real packed scoring and real greedy generation on a tiny model; loglik predictions equal
    the argmax of the stock per-option forward."""
    paths, _ = videos
    tokenizer = tiny_tokenizer(family, words=WORDS)
    model = tiny_model(family, tokenizer, seed=2)
    questions = [question(i, paths[i % 3], n_options=3 + i % 2, answer=i % 3) for i in range(5)]
    results = evaluate(model, tokenizer, questions, method="both", frames=4, batch_size=2,
                       max_new_tokens=4, decode=DecodeConfig(workers=0), progress=False)
    adapter = adapter_for(model)
    for q, row in zip(questions, results["predictions"]):
        video, _ = load_video_inputs(q.video, model.config, num_frames=4)
        prompt = adapter.prompt_ids(tokenizer, format_prompt(q), video)
        options = [adapter.response_ids(tokenizer, t) for t in answer_texts(q)]
        stock = stock_option_logps(model, prompt, options, video)
        torch.testing.assert_close(torch.tensor(row["loglik"]["scores"]), stock, rtol=1e-4,
                                   atol=1e-4)
        assert row["loglik"]["prediction"] == int(stock.argmax())
        response = row["generate"]["response"]
        assert isinstance(response, str)
        assert row["generate"]["prediction"] == extract_choice(response, q.options)
    assert results["loglik"]["total"] == results["generate"]["total"] == 5
    assert results["loglik"]["tied_options"] == 0
