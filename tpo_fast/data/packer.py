"""PairPacker: preference pairs -> one ``PackedBatch``, for one model family.

Everything between a pair and the model's input lives here, so the model only computes: the
prompt and response token ids (the family's chat template, video tokens, end of turn), the
checks that each prompt holds exactly its video's tokens, and ``tpo_fast.packing.pack_pairs``
with the family's position ids (M-RoPE for Qwen-VL). ``TPODataset``, the Hugging Face example's
collator, eval scoring, ``ref-logps`` and the throughput benchmark all pack through it.

Two entries:
* ``pack(prompt_ids, chosen_ids, rejected_ids, videos, ref_logps=None)`` — already tokenised
  pairs (e.g. rows of a tokenised dataset whose prompts came from the family's processor);
* ``pack_examples(examples)`` — raw records ``{"question", "video", "chosen", "rejected"[,
  "system", "ref_logps"]}``: tokenised here, then ``pack``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tpo_fast.models.base import as_index_list
from tpo_fast.packing import PackedBatch, pack_pairs


class PairPacker:
    """Tokenises and packs preference pairs for the family of ``adapter``.

    Args:
        adapter: the family's ``VideoLLMAdapter`` (``PreferenceModel.adapter``, or
            ``tpo_fast.models.adapter_for(hf_model)``). Only its conventions are used (video
            token id and counts, prompt/response templates, position ids); never its weights.
        tokenizer: the model's tokenizer with its chat template; needed by ``prompt_ids``,
            ``response_ids`` and ``pack_examples``, not by ``pack`` (None is fine there).
        system_prompt: the system message of prompts that do not bring their own.
        token_budget: the most packed tokens (Σ prompt + chosen + rejected) one batch may hold;
            ``pack`` raises ``ValueError`` over it (None: no limit). ``TPODataset``'s bins are
            planned under ``data.token_budget`` already; set it where rows arrive in fixed-size
            groups (a ``Trainer``'s collator) to fail with a clear message instead of running
            out of memory.
        backend: index builder, "auto" (native ``tpo_fast._C`` when built), "native" or "numpy".
    """

    def __init__(self, adapter, tokenizer=None, *, system_prompt: str | None = None,
                 token_budget: int | None = None, backend: str = "auto"):
        if token_budget is not None and int(token_budget) < 1:
            raise ValueError(f"token_budget must be a positive number of tokens or None, got "
                             f"{token_budget!r}")
        self.adapter = adapter
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.token_budget = None if token_budget is None else int(token_budget)
        self.backend = backend

    # ---- tokenising ----------------------------------------------------------------------------
    def _tok(self):
        if self.tokenizer is None:
            raise ValueError("this PairPacker has no tokenizer: pass one to tokenise text "
                             "(PairPacker(adapter, tokenizer))")
        return self.tokenizer

    def prompt_ids(self, question: str, video: dict, system: str | None = None) -> list[int]:
        """The chat prompt (generation prompt included) of a question about ``video``, the video
        placeholder expanded to the video's tokens; ``system`` (else ``system_prompt``) as the
        system message."""
        return self.adapter.prompt_ids(self._tok(), question, video,
                                       system=system or self.system_prompt)

    def response_ids(self, text: str) -> list[int]:
        """An answer's token ids, ending with the family's end-of-turn token."""
        return self.adapter.response_ids(self._tok(), text)

    # ---- packing -------------------------------------------------------------------------------
    def pack(self, prompt_ids: Sequence, chosen_ids: Sequence, rejected_ids: Sequence,
             videos: Sequence[dict], ref_logps=None, *, pair_ids=None,
             is_padding: bool = False) -> PackedBatch:
        """Pack n already-tokenised pairs into one micro-batch (token order per pair
        ``[prompt_i | chosen_i | rejected_i]``).

        Args:
            prompt_ids: n prompts, each a 1-D sequence of int token ids (list, numpy array or
                int tensor) holding the video's tokens expanded (``prompt_ids`` writes them;
                a family processor's ``input_ids`` do too).
            chosen_ids, rejected_ids: n responses each, 1-D int sequences, end-of-turn included
                (``response_ids``); at least one token, no video token.
            videos: n dicts, one video's model inputs per pair (``pixel_values_videos`` [..]
                and the family's extras: ``video_grid_thw`` for Qwen-VL, ...).
            ref_logps: None or [n, 2] float (tensor, array or nested list): the reference's
                summed log-probs of (chosen, rejected).
            pair_ids: None or n ints, the pairs' indices in their dataset.
            is_padding: the batch only keeps a rank busy (its loss is weighted 0).
        Returns:
            a ``PackedBatch`` on the CPU (DESIGN.md's contract): ``input_ids`` [T] int64,
            ``position_ids`` [T] or [D, T] int64 (the family's), index arrays, ``target_ids``
            [N], ``seq_id`` [N], ``ref_logps`` [n, 2] float32 or None, ``videos`` as given.
        Raises:
            ValueError naming the pair: a prompt whose video-token count is not its video's, a
            response holding a video token, a malformed video, mismatched lengths, an empty
            response, or a batch over ``token_budget``.
        """
        videos = list(videos)
        n = len(prompt_ids)
        if not (len(chosen_ids) == len(rejected_ids) == len(videos) == n):
            raise ValueError(f"got {n} prompts, {len(chosen_ids)} chosen and "
                             f"{len(rejected_ids)} rejected responses and {len(videos)} videos "
                             "(one of each per pair)")
        video_token = self.adapter.video_token_id
        prompts = [as_index_list(p) for p in prompt_ids]
        for i, video in enumerate(videos):
            self.adapter.check_video(video, f"pair {i}'s video")
            expected = self.adapter.num_video_tokens(video)
            found = prompts[i].count(video_token)
            if found != expected:
                raise ValueError(f"pair {i}: the prompt holds {found} video tokens but its video "
                                 f"makes {expected}")
        for name, rows in (("chosen", chosen_ids), ("rejected", rejected_ids)):
            for i, row in enumerate(rows):
                if video_token in as_index_list(row):
                    raise ValueError(f"pair {i}: the {name} response holds a video token")
        if self.token_budget is not None:
            lengths = [(len(p), len(c), len(r))
                       for p, c, r in zip(prompts, chosen_ids, rejected_ids)]
            total = sum(map(sum, lengths))
            if total > self.token_budget:
                raise ValueError(f"the batch packs {total} tokens, over the packer's "
                                 f"token_budget={self.token_budget} (per pair prompt, chosen, "
                                 f"rejected: {lengths}); pass fewer pairs per batch")
        return pack_pairs(prompts, chosen_ids, rejected_ids, ref_logps=ref_logps,
                          pair_ids=pair_ids, videos=videos, is_padding=is_padding,
                          position_ids_fn=self.adapter.position_ids_fn(prompts, videos),
                          backend=self.backend)

    def pack_examples(self, examples: Sequence[dict]) -> PackedBatch:
        """Tokenise and pack raw pairs, one micro-batch.

        Each example: ``question`` (str), ``video`` (one video's model inputs, a dict),
        ``chosen`` and ``rejected`` (str answers), optional ``system`` (str; else
        ``system_prompt``) and ``ref_logps`` ([2] float: summed reference log-probs of chosen,
        rejected; packed when every example has it, else left out)."""
        videos = [e["video"] for e in examples]
        prompts = [self.prompt_ids(e["question"], v, system=e.get("system"))
                   for e, v in zip(examples, videos)]
        chosen = [self.response_ids(e["chosen"]) for e in examples]
        rejected = [self.response_ids(e["rejected"]) for e in examples]
        ref = None
        if examples and all(e.get("ref_logps") is not None for e in examples):
            ref = torch.stack([torch.as_tensor(e["ref_logps"], dtype=torch.float32)
                               for e in examples])
        return self.pack(prompts, chosen, rejected, videos, ref_logps=ref)
