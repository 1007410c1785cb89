"""Option log-likelihood scoring: the packed fast path and the plain-forward oracle.

A question with K options is scored as ``ceil(K/2)`` preference pairs that share its prompt
(video + question + lettered options): pair k holds option 2k as "chosen" and option 2k+1 as
"rejected" (the last option twice when K is odd), packed by the family's ``PairPacker``, so
``PreferenceModel.policy_logps`` returns every option's summed log-likelihood in one packed
forward per batch of questions, the prompt computed once per pair instead of once per option.
``stock_option_logps`` is the obvious slow path (one standard Hugging Face forward per option);
the tests hold the two equal.
"""

from __future__ import annotations

import torch

from tpo_fast.data.packer import PairPacker
from tpo_fast.eval.records import MCQuestion, letter

DEFAULT_INSTRUCTION = "Answer with the option's letter from the given choices directly."
ANSWER_FORMATS = ("letter", "letter_text")


def format_prompt(question: MCQuestion, instruction: str = DEFAULT_INSTRUCTION) -> str:
    """The question, its options as "A. ...", "B. ..." lines, and the instruction."""
    lines = [question.question]
    lines += [f"{letter(i)}. {option}" for i, option in enumerate(question.options)]
    if instruction:
        lines.append(instruction)
    return "\n".join(lines)


def answer_texts(question: MCQuestion, answer_format: str = "letter") -> list[str]:
    """What each option's answer looks like: "B" (``letter``) or "B. red" (``letter_text``)."""
    if answer_format == "letter":
        return [letter(i) for i in range(len(question.options))]
    if answer_format == "letter_text":
        return [f"{letter(i)}. {option}" for i, option in enumerate(question.options)]
    raise ValueError(f"unknown answer format {answer_format!r}; choose from {ANSWER_FORMATS}")


def option_pairs(n_options: int) -> list[tuple[int, int]]:
    """Options as (chosen, rejected) pairs: (0, 1), (2, 3), ...; an odd last option is paired
    with itself."""
    if n_options < 1:
        raise ValueError("a question needs at least one option")
    return [(k, min(k + 1, n_options - 1)) for k in range(0, n_options, 2)]


def option_logps(preference_model, prompts: list[list[int]], options: list[list[list[int]]],
                 videos: list[dict]) -> list[torch.Tensor]:
    """Summed log-likelihood of every option of every question, in one packed forward.

    Args:
        preference_model: a ``tpo_fast.models.PreferenceModel``.
        prompts: per question, the prompt token ids (video tokens expanded).
        options: per question, per option, the answer token ids (end-of-turn included).
        videos: per question, its video's model inputs.
    Returns:
        per question, a float32 [K] tensor (CPU) of summed log-probs.
    """
    pair_prompts, chosen, rejected, pair_videos, owners = [], [], [], [], []
    for q, (prompt, opts, video) in enumerate(zip(prompts, options, videos)):
        for a, b in option_pairs(len(opts)):
            pair_prompts.append(prompt)
            chosen.append(opts[a])
            rejected.append(opts[b])
            pair_videos.append(video)
            owners.append(q)
    batch = PairPacker(preference_model.adapter).pack(pair_prompts, chosen, rejected, pair_videos)
    with torch.no_grad():
        logps = preference_model.policy_logps(batch).cpu()  # [pairs, 2]
    out: list[list[torch.Tensor]] = [[] for _ in prompts]
    for pair, q in enumerate(owners):
        out[q].append(logps[pair])
    return [torch.stack(rows).flatten()[: len(opts)] for rows, opts in zip(out, options)]


@torch.no_grad()
def stock_option_logps(model, prompt: list[int], options: list[list[int]],
                       video: dict) -> torch.Tensor:
    """The oracle: each option through a standard HF forward + log_softmax -> [K] float32."""
    from tpo_fast.models.stock import stock_response_logps

    return torch.stack([stock_response_logps(model, prompt, response, video).sum()
                        for response in options]).cpu()


def choose(scores: torch.Tensor, lengths: list[int], length_normalize: bool) -> int:
    """The predicted option: argmax of the summed (or per-token mean) log-likelihood."""
    if length_normalize:
        scores = scores / torch.tensor(lengths, dtype=scores.dtype)
    return int(scores.argmax())
