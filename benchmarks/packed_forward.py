"""Prefix-shared packed forward vs unpacked rows: forward+backward time and peak memory.

    python -m benchmarks.packed_forward            # CUDA: Qwen2-1.5B-sized LM, 8k-token prompt,
                                                   # two 256-token responses, bf16
    python -m benchmarks.packed_forward --smoke    # CPU, tiny, seconds (CI)

Variants, each scoring both responses of one pair and back-propagating a loss on their
log-probs through the whole language model (random weights; the time does not depend on them):
* ``unpacked_full_logits``: the usual DPO trainer: two rows [prompt+chosen], [prompt+rejected]
  through the stock forward, full-vocabulary logits at every position, log_softmax, gather;
* ``unpacked_response_head``: the same two rows, LM head applied at response positions only
  (separates the saving of prefix sharing from that of a response-only head);
* ``packed[<backend>]``: one packed sequence [prompt | chosen | rejected] with the
  prefix-shared attention, LM head at response positions only.
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from benchmarks.harness import failure, timed, write_result
from tpo_fast.attention import PACKED_KWARG, PackedAttention, available_backends, packed_forward
from tpo_fast.attention import register as register_attention
from tpo_fast.packing import pack_pairs

QWEN2_1_5B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                  num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                  max_position_embeddings=32768, rope_theta=1e6)
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512, max_position_embeddings=4096)


def build_model(shape: dict, device, dtype, attn: str):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(**shape, tie_word_embeddings=False, use_sliding_window=False)
    model = Qwen2ForCausalLM._from_config(config, attn_implementation=attn, dtype=dtype)
    return model.to(device).train()


def response_logps(hidden, weight, targets, seq_id, n_seqs):
    logits = (hidden @ weight.T).float()
    token = logits.gather(1, targets[:, None])[:, 0] - logits.logsumexp(-1)
    return torch.zeros(n_seqs, device=hidden.device).index_add(0, seq_id, token)


def run(prompt_len: int, response_len: int, shape: dict, device: str, dtype, reps: int,
        report=None) -> dict:
    """Every variant's fwd+bwd; ``report(partial)`` (if given) gets the result so far after
    every variant."""
    vocab = shape["vocab_size"]
    g = torch.Generator().manual_seed(1)
    prompt, chosen, rejected = (torch.randint(0, vocab, (n,), generator=g)
                                for n in (prompt_len, response_len, response_len))
    rows = torch.stack([torch.cat([prompt, chosen]), torch.cat([prompt, rejected])]).to(device)
    responses = torch.stack([chosen, rejected]).to(device)
    cuda = device == "cuda"
    stock_attn = "sdpa"
    model = build_model(shape, device, dtype, stock_attn)
    weight = model.lm_head.weight

    def unpacked_full_logits():
        logits = model(input_ids=rows).logits[:, prompt_len - 1:-1].float()
        logps = logits.log_softmax(-1).gather(2, responses[..., None]).sum((1, 2))
        logps.sum().backward()

    def unpacked_response_head():
        hidden = model.model(input_ids=rows).last_hidden_state[:, prompt_len - 1:-1]
        seq = torch.arange(2, device=device).repeat_interleave(response_len)
        response_logps(hidden.reshape(-1, hidden.shape[-1]), weight, responses.reshape(-1), seq,
                       2).sum().backward()

    batch = pack_pairs([prompt], [chosen], [rejected]).to(device)

    def packed(backend):
        def step():
            attention = PackedAttention.from_batch(batch, backend)
            with packed_forward():
                out = model.model(input_ids=batch.input_ids[None],
                                  position_ids=batch.position_ids[None], use_cache=False,
                                  **{PACKED_KWARG: attention})
            hidden = out.last_hidden_state[0].index_select(0, batch.logit_index)
            response_logps(hidden, weight, batch.target_ids, batch.seq_id, 2).sum().backward()
        return step

    variants = {"unpacked_full_logits": unpacked_full_logits,
                "unpacked_response_head": unpacked_response_head}
    # Packed variants run with the implementation switched to the prefix-shared one; it behaves
    # like sdpa for the unpacked variants, which therefore still measure the stock path.
    model.set_attn_implementation(register_attention())
    for backend in available_backends(device):
        if backend == "sdpa" and cuda:
            continue  # the dense-mask fallback is O(T^2) memory: the CPU path only
        variants[f"packed[{backend}]"] = packed(backend)

    results = {}
    for name, fn in variants.items():
        model.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        try:
            t = timed(fn, reps=reps, warmup=1)
        except Exception as exc:  # e.g. out of memory, or a backend that fails on this torch
            results[name] = failure(exc)
        else:
            entry = {"fwd_bwd": t}
            if cuda:
                entry["peak_extra_memory_gib"] = (torch.cuda.max_memory_allocated()
                                                  - base) / 2**30
            results[name] = entry
        if report is not None:
            report(_summary(results, prompt_len, response_len, shape, dtype, device, stock_attn,
                            complete=False))
    return _summary(results, prompt_len, response_len, shape, dtype, device, stock_attn,
                    complete=True)


def _summary(results, prompt_len, response_len, shape, dtype, device, stock_attn,
             complete: bool) -> dict:
    results = {k: dict(v) for k, v in results.items()}
    base_time = results.get("unpacked_full_logits", {}).get("fwd_bwd", {}).get("median_s")
    for entry in results.values():
        if base_time and "fwd_bwd" in entry:
            entry["speedup_vs_unpacked_full_logits"] = base_time / entry["fwd_bwd"]["median_s"]
    return {"config": {"prompt_tokens": prompt_len, "response_tokens": response_len,
                       "model": shape, "dtype": str(dtype), "device": device,
                       "stock_attention": stock_attn},
            "results": results, "complete": complete}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompt", type=int, default=8192)
    ap.add_argument("--response", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run, result to a temp file")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.smoke:
        out = args.out or tempfile.mkdtemp(prefix="tpo_bench_") + "/packed_forward.json"
        result = run(64, 8, TINY, "cpu", torch.float32, reps=1,
                     report=lambda partial: write_result("packed_forward", partial, out))
    else:
        if not torch.cuda.is_available():
            raise SystemExit("the full benchmark needs CUDA; use --smoke on CPU")
        out = args.out
        result = run(args.prompt, args.response, QWEN2_1_5B, "cuda", torch.bfloat16, args.reps,
                     report=lambda partial: write_result("packed_forward", partial, out))
    path = write_result("packed_forward", result, out)
    for name, entry in result["results"].items():
        if "error" in entry:
            print(f"{name:28s} {entry['error']}")
            continue
        mem = entry.get("peak_extra_memory_gib")
        print(f"{name:28s} {entry['fwd_bwd']['median_s'] * 1e3:9.2f} ms"
              + (f"  {mem:6.2f} GiB" if mem is not None else "")
              + (f"  x{entry['speedup_vs_unpacked_full_logits']:.2f}"
                 if "speedup_vs_unpacked_full_logits" in entry else ""))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
