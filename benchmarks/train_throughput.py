"""Whole training steps (forward, backward, optimizer step): the fast path against the standard
DPO recipe, on the same model and the same pairs, with an ablation of the fast path's savings.

    python -m benchmarks.train_throughput                         # CPU: the scaled shape (below)
    python -m benchmarks.train_throughput --device cuda --frames 32 128   # LLaVA-Video-7B shape
    python -m benchmarks.train_throughput --smoke                 # tiny CPU run, seconds (CI)
    python -m benchmarks.train_throughput --mix                   # + the realistic pair mix

Arms (each one optimizer step over the same ``--pairs-per-step`` pairs, AdamW on the language
model and projector, the vision tower frozen, as in TPO):
* ``standard`` — what TRL, LLaVA-NeXT's ``train_dpo.py`` and LLaMA-Factory run: per pair one
  batch of two right-padded rows [prompt+chosen], [prompt+rejected] through the stock Hugging
  Face forward (``sdpa``), the video given to both rows (the tower runs on both), a live
  reference model (a frozen copy of the policy) over the same two rows, full-vocabulary logits,
  fp32 ``log_softmax`` and gather; sigmoid DPO (β) + α · token-mean NLL of the chosen
  responses; one micro-step per pair, gradients accumulated over the step's pairs.
* ``fast`` — ``TPOObjective(path="fast")``: all the step's pairs packed into one prefix-shared
  micro-batch (``PairPacker.pack``), the tower once per video under no_grad, precomputed
  reference log-probs, the response-only fused LM head + loss (``preference_loss``: Triton on
  CUDA, the chunked torch reference on CPU). The one-time reference pass
  (``PreferenceModel.policy_logps`` under no_grad over the same micro-batch) is timed like an
  arm and its time per pair is added to every arm that uses precomputed log-probs.
* ablation, the fast path with one saving turned off:
  ``no_prefix_sharing`` (each response gets its own copy of the prompt in the packed sequence;
  the features are copied, so the tower still runs once), ``no_vision_once`` (the tower runs
  for each of the two rows; one result is used), ``no_precomputed_reference`` (a live frozen
  reference, ``ReferenceScorer``, every step; no reference pass added), ``no_fused_head`` (the
  LM head over every packed position, fp32 ``log_softmax``, gather, then the same loss), and
  ``no_packing`` (one pair per micro-batch, gradients accumulated).
Arms run interleaved (rep 1 of every arm, then rep 2, ...), so load on a shared machine falls on
all of them alike; the first step of each arm (at the same starting weights, reloaded) is the
equal-loss check and the warm-up, untimed.

Reported per arm: median step time and its spread, pairs/s (pairs per step ÷ (step time + the
reference pass's share)), tokens/s (the pairs' distinct tokens, prompt + chosen + rejected, per
second), peak memory (CUDA: the allocator's peak above what was allocated before the step; CPU:
the resident set's peak above its level before the step, sampled every 5 ms with glibc's mmap
threshold fixed at 64 KiB so freed tensors leave the resident set), and the FLOP count of what
the arm computes with MFU against a matmul measured on the same device in the same run.
FLOP count (``flop_count`` in the JSON): a trained linear layer costs 6 · params · tokens
(forward 2, backward 4), a frozen one 2 · params · tokens; attention's forward costs
4 · heads · head_dim · (query, key) pairs per layer (QK^T and AV), ×3 when trained; causal pairs
only (what the model needs: a dense-mask backend computes more); the LM head 2 · H · V per
position (×3 trained). speedup = fast pairs/s ÷ standard pairs/s; beside it
``flop_bound_speedup`` = standard FLOPs ÷ fast FLOPs a step (the speed-up the work saved allows)
and ``speedup_over_flop_bound``, their ratio.

``--mix`` adds a run on a realistic pair mix (``MIXES``): responses of 20-500 tokens, chosen and
rejected of different lengths, videos of a few lengths (CPU 8/16/24 frames), the standard arm's
rows padded to the longest of each micro-batch as TRL pads them.

CPU shape (``--device cpu``): LLaVA-OneVision (SigLIP tower + Qwen2 LM, random weights) scaled
down: 16 frames of 308 px, 14 px patches → 121 tokens a frame, prompt 2,048 tokens (video +
question), two 128-token responses, the LM 512 wide with Qwen2's proportions (GQA 8/2 heads,
MLP 5.4×), the vocabulary scaled so the LM head is the fraction of the parameters it is in
Qwen2-7B, fp32. CUDA shape: SigLIP-so400m (26 layers as LLaVA-Video uses it, 384 px) + Qwen2-7B
(LM layers truncated to ``--layers``; per-layer numbers in the JSON), 32 and 128 frames, two
256-token responses, bf16.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import os
import statistics
import sys
import tempfile
import threading
import time

import torch

if not torch.cuda.is_available():  # before triton is imported (the Triton path is lazy)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import random  # noqa: E402

from benchmarks.harness import failure, timed, write_result  # noqa: E402

QWEN2_7B_TEXT = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, vocab_size=152064)
SIGLIP_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26,
                     num_attention_heads=16, image_size=384, patch_size=14)
SHAPES = {
    # video tokens: 16 · ceil(22/2)^2 + 1 = 1,937; the question fills the prompt to 2,048
    "cpu": dict(text=dict(hidden_size=512, intermediate_size=2752, num_hidden_layers=2,
                          num_attention_heads=8, num_key_value_heads=2, vocab_size=None),
                vision=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                            num_attention_heads=4, image_size=308, patch_size=14),
                frames=(16,), prompt_tokens=2048, response_tokens=128, pairs_per_step=2,
                dtype="float32", reps=3),
    "cuda": dict(text=dict(QWEN2_7B_TEXT, num_hidden_layers=4), vision=SIGLIP_SO400M,
                 frames=(32, 128), prompt_tokens=None, response_tokens=256, pairs_per_step=2,
                 dtype="bfloat16", reps=2),
    "smoke": dict(text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                            num_attention_heads=4, num_key_value_heads=2, vocab_size=None),
                  vision=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                              num_attention_heads=2, image_size=28, patch_size=14),
                  frames=(2,), prompt_tokens=24, response_tokens=4, pairs_per_step=2,
                  dtype="float32", reps=1),
}
# The realistic pair mix (``--mix``): responses of 20-500 tokens (chosen and rejected drawn
# apart, so the standard recipe's two rows differ in length), a few video lengths, the question
# around the video as on CUDA. The standard arm pads each micro-batch to its longest row, as
# TRL's DPOTrainer (and LLaVA-NeXT's train_dpo.py) pad prompt+chosen and prompt+rejected; its
# micro-batch is one pair (per-device batch 1, the video recipes' setting: videos of different
# lengths do not stack into one pixel tensor).
MIXES = {
    "cpu": dict(frames=(8, 16, 24), response_tokens=(20, 500), pairs_per_step=4, seed=0),
    "cuda": dict(frames=(16, 32, 64), response_tokens=(20, 500), pairs_per_step=4, seed=0),
    "smoke": dict(frames=(1, 2, 3), response_tokens=(2, 9), pairs_per_step=3, seed=0),
}
QUESTION_TOKENS = 40  # text around the video when the prompt length is not given (CUDA)
BETA, ALPHA, LR = 0.2, 1.0, 1e-7
ARMS = ("standard", "fast", "no_prefix_sharing", "no_vision_once", "no_precomputed_reference",
        "no_fused_head", "no_packing")
SAVING = {"no_prefix_sharing": "prefix sharing", "no_vision_once": "vision once",
          "no_precomputed_reference": "precomputed reference", "no_fused_head": "fused head",
          "no_packing": "packing"}
# special ids at the top of the vocabulary
VIDEO_ID_FROM_TOP, IMAGE_ID_FROM_TOP = 1, 2


# ---- the model -----------------------------------------------------------------------------------
def linear_params(text: dict) -> int:
    """Matmul parameters of one decoder layer (q, k, v, o, gate, up, down)."""
    H, heads, kv = text["hidden_size"], text["num_attention_heads"], text["num_key_value_heads"]
    d = H // heads
    return 2 * H * H + 2 * H * kv * d + 3 * H * text["intermediate_size"]


def qwen2_7b_head_fraction() -> float:
    """LM-head parameters / all parameters of Qwen2-7B (untied head and embedding)."""
    t = QWEN2_7B_TEXT
    head = t["vocab_size"] * t["hidden_size"]
    return head / (t["num_hidden_layers"] * linear_params(t) + 2 * head)


def scaled_vocab(text: dict) -> int:
    """The vocabulary that gives the LM head Qwen2-7B's share of the language model's
    parameters: V·H = f · (layers + 2·V·H)."""
    f = qwen2_7b_head_fraction()
    layers = text["num_hidden_layers"] * linear_params(text)
    return round(f * layers / (1 - 2 * f) / text["hidden_size"])


def build_config(shape: dict):
    from transformers import AutoConfig

    text = dict(shape["text"])
    if text["vocab_size"] is None:
        text["vocab_size"] = scaled_vocab(text)
    V = text["vocab_size"]
    text.update(model_type="qwen2", max_position_embeddings=65536, rope_theta=1e6,
                tie_word_embeddings=False, use_sliding_window=False, pad_token_id=0,
                bos_token_id=1, eos_token_id=2, attention_dropout=0.0)
    vision = dict(shape["vision"], model_type="siglip_vision_model")
    return AutoConfig.for_model(
        "llava_onevision", vision_config=vision, text_config=text,
        video_token_id=V - VIDEO_ID_FROM_TOP, image_token_id=V - IMAGE_ID_FROM_TOP,
        vision_feature_layer=-1, vision_feature_select_strategy="full", tie_word_embeddings=False)


def build_model(config, device, dtype):
    from transformers import LlavaOnevisionForConditionalGeneration

    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs (a 7B-shape init on the host is slow)
        model = LlavaOnevisionForConditionalGeneration._from_config(
            config, attn_implementation="sdpa", dtype=dtype)
    return model.to(device).train()


def parameter_counts(model, policy) -> dict:
    lm = policy.adapter.base.language_model
    head = policy.lm_head_weight().numel()
    embed = lm.get_input_embeddings().weight.numel()
    vision = sum(p.numel() for p in policy.adapter.vision_tower().parameters())
    projector = sum(p.numel() for p in policy.adapter.projector_parameters())
    total = sum(p.numel() for p in model.parameters())
    layers = sum(p.numel() for p in lm.layers.parameters())
    return {"total": total, "lm_head": head, "embedding": embed, "lm_layers": layers,
            "vision_tower": vision, "projector": projector,
            "lm_head_fraction_of_all": head / total,
            "lm_head_fraction_of_language_model": head / (layers + head + embed),
            "qwen2_7b_lm_head_fraction_of_language_model": qwen2_7b_head_fraction()}


# ---- the pairs -----------------------------------------------------------------------------------
def make_pairs(policy, config, n_pairs: int, frames: int, prompt_tokens: int | None,
               response_tokens: int, seed: int = 0, lengths=None):
    """n pairs: random pixels, a prompt of ``prompt_tokens`` (video tokens + question text; the
    question's length differs by a few tokens between pairs), two ``response_tokens`` responses;
    or, with ``lengths`` (``mix_lengths``), pair i's (frames, chosen, rejected) from it."""
    g = torch.Generator().manual_seed(seed)
    V = config.text_config.vocab_size
    size = config.vision_config.image_size
    pairs = []
    for i in range(n_pairs):
        if lengths is not None:
            frames, chosen_len, rejected_len = lengths[i]
        else:
            chosen_len = rejected_len = response_tokens
        video = {"pixel_values_videos": torch.randn(1, frames, 3, size, size, generator=g)}
        n_video = policy.adapter.num_video_tokens(video)
        n_text = (prompt_tokens - n_video if prompt_tokens else QUESTION_TOKENS) - 3 * i
        if n_text < 2:
            raise ValueError(f"a prompt of {prompt_tokens} tokens cannot hold {n_video} video "
                             "tokens and a question")
        text = torch.randint(10, V - 10, (n_text,), generator=g).tolist()
        prompt = text[:n_text // 4] + [config.video_token_id] * n_video + text[n_text // 4:]
        chosen, rejected = (torch.randint(10, V - 10, (n,), generator=g).tolist()
                            for n in (chosen_len, rejected_len))
        pairs.append(dict(prompt=prompt, chosen=chosen, rejected=rejected, video=video))
    return pairs


def mix_lengths(mix: dict) -> list[tuple[int, int, int]]:
    """(frames, chosen tokens, rejected tokens) of each pair of a pair mix (``MIXES``): the video
    lengths in turn, the responses' lengths drawn uniformly (seeded)."""
    rng = random.Random(mix["seed"])
    lo, hi = mix["response_tokens"]
    frames = mix["frames"]
    return [(frames[i % len(frames)], rng.randint(lo, hi), rng.randint(lo, hi))
            for i in range(mix["pairs_per_step"])]


def pack(policy, pairs, ref_logps=None):
    from tpo_fast.data.packer import PairPacker

    return PairPacker(policy.adapter).pack(
        [p["prompt"] for p in pairs], [p["chosen"] for p in pairs],
        [p["rejected"] for p in pairs], [p["video"] for p in pairs], ref_logps=ref_logps)


# ---- the arms ------------------------------------------------------------------------------------
class Bench:
    """One policy, its optimizer and a frozen reference copy; every arm's step function."""

    def __init__(self, shape: dict, frames: int, device: str, dtype):
        from tpo_fast.kernels import LossSpec

        from tpo_fast.models import PreferenceModel
        from tpo_fast.train.objective import ReferenceScorer, TPOObjective

        self.device, self.dtype = torch.device(device), dtype
        self.config = build_config(shape)
        model = build_model(self.config, device, dtype)
        self.reference_model = copy.deepcopy(model).eval().requires_grad_(False)
        self.policy = PreferenceModel(model)  # tower frozen, projector trained (TPO)
        self.model = model
        self.initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        ref_policy = PreferenceModel(self.reference_model)
        self.reference_scorer = ReferenceScorer(ref_policy)
        self.spec = LossSpec(beta=BETA, sft_weight=ALPHA)
        self.objective = TPOObjective(self.policy, self.spec, "fast")
        self.trained = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trained, lr=LR, weight_decay=0.0)
        mix = shape.get("mix")
        G = mix["pairs_per_step"] if mix else shape["pairs_per_step"]
        self.pairs = make_pairs(self.policy, self.config, G, frames,
                                None if mix else shape["prompt_tokens"],
                                shape["response_tokens"],
                                lengths=mix_lengths(mix) if mix else None)
        self.n_pairs = G
        self.chosen_tokens = sum(len(p["chosen"]) for p in self.pairs)
        # Batches are built once (host-side work that a data loader overlaps with the step).
        self.batch = pack(self.policy, self.pairs)
        self.single_batches = [pack(self.policy, [p]) for p in self.pairs]
        with torch.no_grad():
            self.ref_logps = self.policy.policy_logps(self.batch)  # reloaded weights: = ref
        self.unshared = [self._unshared_layout(p) for p in self.pairs]
        self.standard_rows = [self._standard_rows(p) for p in self.pairs]

    # -- shared pieces --
    def reset_weights(self):
        with torch.no_grad():
            for k, v in self.model.state_dict().items():
                v.copy_(self.initial[k])
        self.optimizer.zero_grad(set_to_none=True)

    def optimizer_step(self):
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _fast_loss(self, batch, ref_logps):
        return self.objective(batch, ref_logps, float(self.n_pairs), float(self.chosen_tokens))[0]

    def ref_pass(self):
        """The one-time reference pass over the step's pairs (``ref-logps``)."""
        with torch.no_grad():
            return self.policy.policy_logps(self.batch)

    # -- fast and its ablation --
    def step_fast(self):
        loss = self._fast_loss(self.batch, self.ref_logps)
        loss.backward()
        self.optimizer_step()
        return float(loss.detach())

    def step_no_packing(self):
        total = 0.0
        for i, batch in enumerate(self.single_batches):
            loss = self._fast_loss(batch, self.ref_logps[i:i + 1])
            loss.backward()
            total += float(loss.detach())
        self.optimizer_step()
        return total

    def step_no_vision_once(self):
        # the standard recipe's second row runs the tower again; its result is not needed
        self.policy.encode_videos(self.batch.videos)
        return self.step_fast()

    def step_no_precomputed_reference(self):
        ref_logps = self.reference_scorer(self.batch)
        loss = self._fast_loss(self.batch, ref_logps)
        loss.backward()
        self.optimizer_step()
        return float(loss.detach())

    def _packed_hidden(self, input_ids, position_ids, features, attention):
        from tpo_fast.attention import PACKED_KWARG, packed_forward

        adapter = self.policy.adapter
        with packed_forward():
            return adapter.decoder_hidden_states(
                input_ids[None].to(self.device),
                adapter.model_position_ids(position_ids).to(self.device), features,
                **{PACKED_KWARG: attention})[0]

    def _loss_from_hidden(self, hidden, target_ids, seq_id, ref_logps, full_logits_at=None):
        from tpo_fast.kernels import dpo_sft_loss, preference_loss

        common = dict(num_pairs=self.n_pairs,
                      dpo_normalizer=float(self.n_pairs),
                      sft_normalizer=float(self.chosen_tokens),
                      check_inputs=not hidden.is_cuda)
        weight = self.policy.lm_head_weight()
        if full_logits_at is None:
            return preference_loss(hidden, weight, target_ids, seq_id, ref_logps, self.spec,
                                   **common)[0]
        logps = (hidden @ weight.T).float().log_softmax(-1)  # every packed position
        token = logps.index_select(0, full_logits_at).gather(1, target_ids[:, None])[:, 0]
        return dpo_sft_loss(token, seq_id, ref_logps, self.spec, **common)[0]

    def step_no_fused_head(self):
        from tpo_fast.attention import PackedAttention

        b = self.batch
        features = self.policy.encode_videos(b.videos)
        attention = PackedAttention.from_batch(b, self.policy.attention_backend, self.device)
        hidden = self._packed_hidden(b.input_ids, b.position_ids, features, attention)
        loss = self._loss_from_hidden(hidden, b.target_ids.to(self.device),
                                      b.seq_id.to(self.device), self.ref_logps,
                                      full_logits_at=b.logit_index.to(self.device))
        loss.backward()
        self.optimizer_step()
        return float(loss.detach())

    def _unshared_layout(self, pair):
        """One pair packed as two independent segments [prompt+chosen | prompt+rejected]:
        (input_ids, position_ids, attention, logit_index, target_ids, seq_id) for pair-local
        seq ids 0/1."""
        from tpo_fast.attention import PackedAttention

        rows = [pair["prompt"] + pair["chosen"], pair["prompt"] + pair["rejected"]]
        P = len(pair["prompt"])
        lens = [len(r) for r in rows]
        cu = torch.tensor([0, lens[0], lens[0] + lens[1]], dtype=torch.int32)
        attention = PackedAttention(cu.to(self.device), cu.to(self.device), max(lens), max(lens),
                                    torch.arange(sum(lens), device=self.device),
                                    self.policy.attention_backend)
        input_ids = torch.tensor(rows[0] + rows[1])
        position_ids = torch.cat([torch.arange(n) for n in lens])
        logit_index = torch.cat([torch.arange(P - 1, lens[0] - 1),
                                 lens[0] + torch.arange(P - 1, lens[1] - 1)])
        targets = torch.tensor(pair["chosen"] + pair["rejected"])
        seq = torch.cat([torch.zeros(len(pair["chosen"])), torch.ones(len(pair["rejected"]))])
        return input_ids, position_ids, attention, logit_index, targets, seq.long()

    def step_no_prefix_sharing(self):
        from types import SimpleNamespace

        features = self.policy.encode_videos(self.batch.videos).pooler_output  # [1, Σ tokens, H]
        per_video = [self.policy.adapter.num_video_tokens(p["video"]) for p in self.pairs]
        parts = features[0].split(per_video)
        ids, pos, attn_cu, index, targets, seqs, offset = [], [], [0], [], [], [], 0
        copies = []
        for i, (layout, part) in enumerate(zip(self.unshared, parts)):
            input_ids, position_ids, attention, logit_index, target, seq = layout
            ids.append(input_ids)
            pos.append(position_ids)
            cu = attention.host_cu_seqlens_q
            attn_cu += [offset + cu[1], offset + cu[2]]
            index.append(logit_index + offset)
            targets.append(target)
            seqs.append(seq + 2 * i)
            copies += [part, part]  # each prompt copy gets the video's features (tower once)
            offset += cu[2]
        from tpo_fast.attention import PackedAttention

        cu = torch.tensor(attn_cu, dtype=torch.int32, device=self.device)
        lengths = cu.diff()
        attention = PackedAttention(cu, cu, int(lengths.max()), int(lengths.max()),
                                    torch.arange(offset, device=self.device),
                                    self.policy.attention_backend, tuple(attn_cu), tuple(attn_cu))
        hidden = self._packed_hidden(torch.cat(ids), torch.cat(pos),
                                     SimpleNamespace(pooler_output=torch.cat(copies)[None]),
                                     attention)
        hidden = hidden.index_select(0, torch.cat(index).to(self.device))
        loss = self._loss_from_hidden(hidden, torch.cat(targets).to(self.device),
                                      torch.cat(seqs).to(self.device), self.ref_logps)
        loss.backward()
        self.optimizer_step()
        return float(loss.detach())

    # -- the standard recipe --
    def _standard_rows(self, pair):
        """[2, L] right-padded rows, their attention mask and [2, L-1] response-target mask."""
        rows = [pair["prompt"] + pair["chosen"], pair["prompt"] + pair["rejected"]]
        L = max(map(len, rows))
        ids = torch.zeros(2, L, dtype=torch.long)
        mask = torch.zeros(2, L, dtype=torch.long)
        labels = torch.zeros(2, L - 1, dtype=torch.bool)
        P = len(pair["prompt"])
        for r, row in enumerate(rows):
            ids[r, :len(row)] = torch.tensor(row)
            mask[r, :len(row)] = 1
            labels[r, P - 1:len(row) - 1] = True
        pixels = pair["video"]["pixel_values_videos"].expand(2, -1, -1, -1, -1).contiguous()
        return (ids.to(self.device), mask.to(self.device), labels.to(self.device),
                pixels.to(self.device, self.dtype))

    @staticmethod
    def _row_logps(model, ids, mask, labels, pixels):
        """[2] summed response log-probs and [2] summed chosen... from full logits."""
        logits = model(input_ids=ids, attention_mask=mask, pixel_values_videos=pixels,
                       use_cache=False).logits[:, :-1].float()
        token = logits.log_softmax(-1).gather(2, ids[:, 1:, None])[..., 0]
        return (token * labels).sum(1)

    def step_standard(self):
        total = 0.0
        for ids, mask, labels, pixels in self.standard_rows:
            policy = self._row_logps(self.model, ids, mask, labels, pixels)
            with torch.no_grad():
                ref = self._row_logps(self.reference_model, ids, mask, labels, pixels)
            logits = BETA * ((policy[0] - ref[0]) - (policy[1] - ref[1]))
            dpo = -torch.nn.functional.logsigmoid(logits)
            nll = -policy[0]
            loss = dpo / self.n_pairs + ALPHA * nll / self.chosen_tokens
            loss.backward()
            total += float(loss.detach())
        self.optimizer_step()
        return total

    def step(self, arm: str):
        return getattr(self, f"step_{arm}")()


# ---- FLOPs ---------------------------------------------------------------------------------------
def _causal_pairs(n: int) -> int:
    return n * (n + 1) // 2


def flop_count(bench: Bench, arm: str) -> dict:
    """FLOPs of one step of ``arm``, by component (see the module docstring)."""
    cfg = bench.config
    t, v = cfg.text_config, cfg.vision_config
    H, V, layers = t.hidden_size, t.vocab_size, t.num_hidden_layers
    lin = layers * linear_params(dict(hidden_size=H, num_attention_heads=t.num_attention_heads,
                                      num_key_value_heads=t.num_key_value_heads,
                                      intermediate_size=t.intermediate_size))
    attn_unit = 4 * H * layers  # per (query, key) pair, forward
    vh, patches_side = v.hidden_size, v.image_size // v.patch_size
    vis_lin = v.num_hidden_layers * (4 * vh * vh + 2 * vh * v.intermediate_size)
    proj = vh * H + H * H
    P = [len(p["prompt"]) for p in bench.pairs]
    C = [len(p["chosen"]) for p in bench.pairs]
    R = [len(p["rejected"]) for p in bench.pairs]
    frames = [p["video"]["pixel_values_videos"].shape[1] for p in bench.pairs]
    n_patches = sum(frames) * patches_side ** 2
    vision_fwd = (2 * vis_lin * n_patches
                  + 4 * vh * v.num_hidden_layers * sum(frames) * patches_side ** 4)
    projector_fwd = 2 * proj * n_patches

    shared_tokens = sum(p + c + r for p, c, r in zip(P, C, R))
    shared_pairs = sum(_causal_pairs(p + c) + r * p + _causal_pairs(r) for p, c, r in zip(P, C, R))
    row_len = [max(p + c, p + r) for p, c, r in zip(P, C, R)]  # padded rows
    row_tokens = sum(2 * n for n in row_len)
    row_pairs = sum(2 * _causal_pairs(n) for n in row_len)
    unshared_tokens = sum(2 * p + c + r for p, c, r in zip(P, C, R))
    unshared_pairs = sum(_causal_pairs(p + c) + _causal_pairs(p + r) for p, c, r in zip(P, C, R))
    response = sum(c + r for c, r in zip(C, R))

    def lm(tokens, pairs, head_positions, trained=True):
        k = 3 if trained else 1
        return {"linear": k * 2 * lin * tokens, "attention": k * attn_unit * pairs,
                "lm_head": k * 2 * H * V * head_positions}

    parts = {}
    if arm == "standard":
        parts["policy"] = lm(row_tokens, row_pairs, row_tokens)
        parts["reference"] = lm(row_tokens, row_pairs, row_tokens, trained=False)
        parts["vision"] = {"tower": 4 * vision_fwd, "projector": 2 * 3 * projector_fwd
                           + 2 * projector_fwd}
    else:
        tokens, pairs = ((unshared_tokens, unshared_pairs) if arm == "no_prefix_sharing"
                         else (shared_tokens, shared_pairs))
        head = shared_tokens if arm == "no_fused_head" else response
        parts["policy"] = lm(tokens, pairs, head)
        towers = 2 if arm == "no_vision_once" else 1
        parts["vision"] = {"tower": towers * vision_fwd,
                           "projector": 3 * projector_fwd + (towers - 1) * projector_fwd}
        if arm == "no_precomputed_reference":
            parts["reference"] = lm(shared_tokens, shared_pairs, response, trained=False)
            parts["vision"]["tower"] += vision_fwd
            parts["vision"]["projector"] += projector_fwd
        else:  # the one-time reference pass, per step's pairs
            parts["reference_pass"] = lm(shared_tokens, shared_pairs, response, trained=False)
            parts["reference_pass"]["vision"] = vision_fwd + projector_fwd
    total = sum(x for part in parts.values() for x in part.values())
    return {"total": total, "by_part": parts}


FLOP_FORMULA = (
    "trained LM: 6*lin*tokens + 3*4*H*layers*causal_pairs + 6*H*V*head_positions; frozen "
    "reference: a third of that; tower: 2*vis_lin*patches + 4*vh*layers_v*frames*patches^2 "
    "(frozen, forward only); projector: 6*proj*patches trained, 2*proj*patches frozen. lin = "
    "layers*(2H^2 + 2H*kv*d + 3H*I); causal_pairs per segment of Lq queries over Lk keys = "
    "Lq*(Lk-Lq) + Lq(Lq+1)/2")


def flop_bound(bench: Bench) -> float:
    """The speed-up the FLOPs allow: standard FLOPs ÷ fast FLOPs a step (``flop_count``; the
    fast arm's count includes the one-time reference pass's share). A measured speed-up near
    it means the fast path turns its saved work into time; far under it, overheads eat it."""
    return flop_count(bench, "standard")["total"] / flop_count(bench, "fast")["total"]


# ---- measuring -----------------------------------------------------------------------------------
class RSSPeak:
    """Peak resident set (bytes) above its level at start, sampled every 5 ms on a thread."""

    def __init__(self):
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def __enter__(self):
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        self.extra = self.peak - self.base


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def fix_malloc_threshold():
    """glibc: every allocation ≥ 64 KiB is its own mmap (freed at once), so RSS tracks live
    tensors; without this the threshold adapts and freed blocks stay resident."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(-3, 65536)  # M_MMAP_THRESHOLD
    return libc is not None


def measured_step(fn, device) -> tuple[float, float | None, object]:
    """(seconds, peak extra memory in bytes, fn's value) of one step, via the harness's timer."""
    out = {}

    def run():
        out["value"] = fn()

    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        t = timed(run, reps=1, warmup=0)["median_s"]
        return t, torch.cuda.max_memory_allocated() - base, out["value"]
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
    with RSSPeak() as mem:
        t = timed(run, reps=1, warmup=0)["median_s"]
    return t, mem.extra, out["value"]


def matmul_peak(device, dtype) -> dict:
    """Measured dense matmul throughput on this device (the MFU roofline)."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = timed(lambda: a @ b, reps=10 if device.type == "cuda" else 5, warmup=2)["median_s"]
    return {"n": n, "dtype": str(dtype), "median_s": t, "flops_per_s": 2 * n ** 3 / t}


def load_now() -> dict:
    one, five, fifteen = os.getloadavg()
    return {"loadavg_1m": one, "loadavg_5m": five, "loadavg_15m": fifteen,
            "time": time.strftime("%H:%M:%S")}


def run_shape(shape: dict, frames: int, device: str, dtype, reps: int, arms=ARMS,
              loss_rtol: float = 1e-4) -> dict:
    dev = torch.device(device)
    bench = Bench(shape, frames, device, dtype)
    counts = parameter_counts(bench.model, bench.policy)
    peak = matmul_peak(dev, dtype)
    # the equal-loss check and warm-up: the first step of every arm from the same weights
    check, failed = {}, {}
    for arm in arms:
        bench.reset_weights()
        try:
            check[arm] = bench.step(arm)
        except Exception as exc:  # e.g. out of memory (the standard rows' full logits)
            failed[arm] = failure(exc)["error"]
            bench.optimizer.zero_grad(set_to_none=True)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            print(f"  check {arm}: {failed[arm][:80]}", file=sys.stderr, flush=True)
            continue
        print(f"  check {arm}: loss {check[arm]:.6f}", file=sys.stderr, flush=True)
    arms = tuple(a for a in arms if a not in failed)
    bench.reset_weights()
    bench.ref_pass()
    times = {a: [] for a in (*arms, "reference_pass")}
    memory = {a: [] for a in times}
    for _ in range(reps):
        for arm in (*arms, "reference_pass"):
            fn = bench.ref_pass if arm == "reference_pass" else (lambda a=arm: bench.step(a))
            t, m, _ = measured_step(fn, dev)
            times[arm].append(t)
            memory[arm].append(m)
            print(f"  rep {len(times[arm])} {arm}: {t:.3f} s", file=sys.stderr, flush=True)
    G = bench.n_pairs
    distinct_tokens = sum(len(p["prompt"]) + len(p["chosen"]) + len(p["rejected"])
                          for p in bench.pairs)
    ref_s = statistics.median(times["reference_pass"])
    results = {}
    for arm in arms:
        step_s = statistics.median(times[arm])
        ref_share = 0.0 if arm in ("standard", "no_precomputed_reference") else ref_s
        per_step = step_s + ref_share
        flops = flop_count(bench, arm)
        results[arm] = {
            "step_s": {"median": step_s, "min": min(times[arm]), "max": max(times[arm]),
                       "all": times[arm]},
            "reference_pass_s_added": ref_share,
            "pairs_per_s": G / per_step,
            "tokens_per_s": distinct_tokens / per_step,
            "peak_extra_memory_bytes": max(memory[arm]),
            "flops_per_step": flops,
            "model_flops_per_s": flops["total"] / per_step,
            "mfu": flops["total"] / per_step / peak["flops_per_s"],
            "loss_at_step_0": check[arm],
        }
    results.update({arm: {"error": why} for arm, why in failed.items()})
    base = results["standard"]["pairs_per_s"] if "standard" in check else None
    fast = results["fast"]["pairs_per_s"] if "fast" in check else None
    for arm, entry in results.items():
        if "error" in entry:
            continue
        if base:
            entry["speedup_vs_standard"] = entry["pairs_per_s"] / base
        if fast and arm in SAVING:
            entry["saving_turned_off"] = SAVING[arm]
            entry["fast_speedup_over_this"] = fast / entry["pairs_per_s"]
    ref_loss = check.get("standard", check.get("fast", 0.0))
    diffs = {arm: abs(v - ref_loss) / max(abs(ref_loss), 1e-12) for arm, v in check.items()}
    lm_layers = bench.config.text_config.num_hidden_layers
    speedup = fast / base if base and fast else None
    bound = flop_bound(bench)
    return {
        "frames": frames if "mix" not in shape else "mix",
        "pairs_per_step": G,
        "lengths": [{"frames": p["video"]["pixel_values_videos"].shape[1],
                     "prompt": len(p["prompt"]), "chosen": len(p["chosen"]),
                     "rejected": len(p["rejected"]),
                     "video_tokens": bench.policy.adapter.num_video_tokens(p["video"])}
                    for p in bench.pairs],
        "parameters": counts,
        "lm_layers": lm_layers,
        "matmul_peak": peak,
        "reference_pass_s": {"median": ref_s, "all": times["reference_pass"]},
        "equal_loss": {"losses": check, "relative_difference": diffs, "rtol": loss_rtol,
                       "passed": len(check) > 1 and all(d <= loss_rtol for d in diffs.values())},
        "arms": results,
        "speedup": speedup,
        "flop_bound_speedup": bound,
        "speedup_over_flop_bound": speedup / bound if speedup else None,
    }


def _payload(runs, shape, device, dtype, reps, load_before, wall, complete) -> dict:
    ok = [r for r in runs if "arms" in r and r["frames"] != "mix"]
    mix = next((r for r in runs if r["frames"] == "mix"), None)
    return {
        "speedup": ok[0]["speedup"] if ok else None,
        "flop_bound_speedup": ok[0]["flop_bound_speedup"] if ok else None,
        "speedup_over_flop_bound": ok[0]["speedup_over_flop_bound"] if ok else None,
        "speedup_note": "fast pairs/s ÷ standard pairs/s at the first shape (frames "
                        f"{ok[0]['frames'] if ok else '-'}); flop_bound_speedup: standard FLOPs "
                        "÷ fast FLOPs a step there (flop_formula); every shape's is under runs",
        "mix": None if mix is None else (
            {"error": mix["error"]} if "error" in mix else
            {"speedup": mix["speedup"], "flop_bound_speedup": mix["flop_bound_speedup"],
             "speedup_over_flop_bound": mix["speedup_over_flop_bound"],
             "pairs": mix["lengths"], "padding": "standard: each pair's two rows padded to "
                                                 "the longer (TRL's padding, batch 1)"}),
        "equal_loss_passed": (all(r["equal_loss"]["passed"] for r in runs if "arms" in r)
                              and any("arms" in r for r in runs)),
        "ablation": {r["frames"]: {arm: ({"saving_turned_off": SAVING[arm], "error": e["error"]}
                                         if "error" in e else
                                         {"saving_turned_off": SAVING[arm],
                                          "pairs_per_s": e["pairs_per_s"],
                                          "fast_speedup_over_this": e.get(
                                              "fast_speedup_over_this")})
                                   for arm, e in r["arms"].items() if arm in SAVING}
                     for r in runs if "arms" in r},
        "config": {"shape": shape, "device": device, "dtype": str(dtype), "reps": reps,
                   "beta": BETA, "sft_weight": ALPHA, "lr": LR,
                   "optimizer": "torch.optim.AdamW on the LM and projector (tower frozen)",
                   "threads": torch.get_num_threads(),
                   "attention": {"fast": "tpo_prefix_shared (PreferenceModel, backend auto)",
                                 "standard": "sdpa (tpo_prefix_shared outside a packed "
                                             "forward calls transformers' sdpa unchanged)"}},
        "flop_formula": FLOP_FORMULA,
        "memory_method": ("CUDA: torch.cuda.max_memory_allocated above the step's start" if
                          device == "cuda" else "CPU: peak RSS above the step's start, sampled "
                          "every 5 ms, glibc mmap threshold fixed at 64 KiB, malloc_trim before"),
        "load": {"before": load_before, "after": load_now()},
        "wall_s": wall,
        "complete": complete,
        "runs": runs,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--frames", type=int, nargs="+", help="frames per video (default: the shape's)")
    ap.add_argument("--layers", type=int, help="LM layers (CUDA default 4: Qwen2-7B truncated)")
    ap.add_argument("--pairs-per-step", type=int)
    ap.add_argument("--reps", type=int)
    ap.add_argument("--arms", nargs="+", choices=ARMS, help="default: all")
    ap.add_argument("--mix", action="store_true",
                    help="also run the realistic pair mix (MIXES: responses 20-500 tokens, a "
                         "few video lengths) after the shapes")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run, result to a temp file")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    name = "smoke" if args.smoke else args.device
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda needs CUDA")
    shape = copy.deepcopy(SHAPES[name])
    if args.layers:
        shape["text"]["num_hidden_layers"] = args.layers
    if args.pairs_per_step:
        shape["pairs_per_step"] = args.pairs_per_step
    arms = tuple(args.arms) if args.arms else ARMS
    if "standard" not in arms or "fast" not in arms:
        raise SystemExit("--arms must include standard and fast (the speed-up's two terms)")
    dtype = getattr(torch, shape["dtype"])
    device = "cpu" if args.smoke else args.device
    reps = args.reps or shape["reps"]
    rtol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    if device == "cpu":
        fix_malloc_threshold()
        torch.manual_seed(0)
    load_before = load_now()
    start = time.perf_counter()
    out = args.out or (tempfile.mkdtemp(prefix="tpo_bench_") + "/train_throughput.json"
                       if args.smoke else None)
    plan = [(shape, frames) for frames in args.frames or shape["frames"]]
    if args.mix:
        plan.append((dict(shape, mix=MIXES[name]), None))
    runs = []
    for i, (run_shape_, frames) in enumerate(plan):
        try:
            runs.append(run_shape(run_shape_, frames, device, dtype, reps, arms, rtol))
        except Exception as exc:  # e.g. out of memory building the shape: the others run
            runs.append({"frames": frames or "mix", **failure(exc)})
        if device == "cuda":
            torch.cuda.empty_cache()
        payload = _payload(runs, shape, device, dtype, reps, load_before,
                           time.perf_counter() - start, complete=i == len(plan) - 1)
        path = write_result("train_throughput", payload, out)  # after every shape
    wall = payload["wall_s"]
    for r in runs:
        if "error" in r:
            print(f"frames {r['frames']}: {r['error']}")
            continue
        print(f"frames {r['frames']}, {r['pairs_per_step']} pairs/step, prompt "
              f"{r['lengths'][0]['prompt']} tokens, LM layers {r['lm_layers']}")
        for arm, e in r["arms"].items():
            if "error" in e:
                print(f"  {arm:26s} {e['error'][:70]}")
                continue
            mem = e["peak_extra_memory_bytes"]
            print(f"  {arm:26s} {e['step_s']['median']:8.3f} s  {e['pairs_per_s']:8.3f} pairs/s"
                  f"  x{e.get('speedup_vs_standard', float('nan')):5.2f}  mfu {e['mfu']:.3f}"
                  + (f"  mem {mem / 2**20:8.1f} MiB" if mem is not None else "")
                  + f"  loss {e['loss_at_step_0']:.6f}")
        print(f"  equal loss: {r['equal_loss']['passed']}  speedup {r['speedup']}  FLOP bound "
              f"{r['flop_bound_speedup']:.3f}  measured/bound {r['speedup_over_flop_bound']}")
    print(f"wall {wall:.1f} s; written to {path}")
    return 0 if payload["equal_loss_passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
