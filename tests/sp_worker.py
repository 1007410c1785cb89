"""Run under torchrun (2 gloo processes) by tests/test_sequence_parallel.py.

``python -m torch.distributed.run --nproc_per_node=2 tests/sp_worker.py FAMILY OUT.json``

Builds the same tiny FAMILY model on every rank, packs pairs of different lengths (their
prompts hold videos, so some prompt straddles the shard boundary), and computes the TPO loss
and every trainable gradient twice: on one rank without sequence parallelism (SP = 1), and split
over the 2 ranks with it (SP = 2; gradients summed over the group, as DeepSpeed's SP-aware
reduction does). Rank 0 writes the largest differences and the shard layout to OUT.json.
"""

import json
import os
import sys

import torch
import torch.distributed as dist


def main(family: str, out: str):
    import deepspeed

    from tpo_fast.models import PreferenceModel
    from tpo_fast.models.tiny import tiny_model, tiny_tokenizer
    from tpo_fast.sequence_parallel import init_sequence_parallel

    deepspeed.init_distributed(dist_backend="gloo")
    tokenizer = tiny_tokenizer(family)
    model = tiny_model(family, tokenizer, seed=0, hidden=64)
    policy = PreferenceModel(model, attention_backend="sdpa")
    sp, _ = init_sequence_parallel(2, model.config)
    # (pairs, seed): several pairs of different lengths; the seeds give an even and an odd
    # token count (the last shard padded); one pair whose prompt fills the first shard (that
    # rank scores no token)
    cases = ((5, 0), (4, 1), (3, 3), (1, 2))
    results = [compare(policy, sp, tokenizer, n, seed) for n, seed in cases]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, results)
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(gathered, f, indent=2)
    dist.barrier()
    # leave without tearing the groups down: gloo's teardown of the DeepSpeed SP groups
    # aborted a process now and then ("terminate called without an active exception")
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(0)


def compare(policy, sp, tokenizer, n_pairs, seed):
    from test_models_packed import make_pairs
    from tpo_fast.kernels import LossSpec

    from tpo_fast.data.packer import PairPacker

    policy.enable_sequence_parallel(None)
    model = policy.model
    pairs = make_pairs(policy.adapter.model.config.model_type, tokenizer, model,
                       n_pairs=n_pairs, seed=seed)
    batch = PairPacker(policy.adapter).pack(*pairs)
    gen = torch.Generator().manual_seed(seed)
    batch = type(batch)(**{**batch.__dict__, "ref_logps": -20 * torch.rand(batch.n_pairs, 2,
                                                                            generator=gen)})
    spec = LossSpec(beta=0.1, sft_weight=0.5)

    seen = []  # rows (frames, patches) into the vision tower
    hook = policy.adapter.vision_tower().register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(_rows(args, kwargs)), with_kwargs=True)

    def run():
        seen.clear()
        policy.zero_grad(set_to_none=True)
        loss, metrics = policy(batch, loss=spec)
        loss.backward()
        grads = {n: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
                 for n, p in policy.named_parameters() if p.requires_grad}
        return loss.detach(), metrics["policy_logps"], grads, sum(seen)

    one_loss, one_logps, one_grads, one_rows = run()
    policy.enable_sequence_parallel(sp)
    plan = policy.shard(batch).shard
    batch = policy.shard(batch)
    two_loss, two_logps, two_grads, two_rows = run()
    hook.remove()
    for g in two_grads.values():
        dist.all_reduce(g, group=sp.group)

    offsets = batch.pair_offsets.tolist()
    prompt_ends = [offsets[i] + len(pairs[0][i]) for i in range(batch.n_pairs)]
    boundary = plan.length
    straddles = [i for i in range(batch.n_pairs) if offsets[i] < boundary < prompt_ends[i]]
    grad_diff = {n: float((two_grads[n] - g).abs().max()) for n, g in one_grads.items()}
    scale = {n: float(g.abs().max()) for n, g in one_grads.items()}
    return dict(
        rank=dist.get_rank(), tokens=batch.num_tokens, shard_length=plan.length,
        pairs=batch.n_pairs, straddling_prompts=straddles, scored_per_rank=list(plan.counts),
        loss_one=float(one_loss), loss_two=float(two_loss),
        logps_diff=float((two_logps - one_logps).abs().max()),
        grad_max_diff=max(grad_diff.values()), grad_max=max(scale.values()),
        nonzero_grads=sum(1 for v in scale.values() if v > 0), trainable=len(one_grads),
        worst=max(grad_diff, key=grad_diff.get), tower_rows_one=one_rows,
        tower_rows_two=two_rows)


def _rows(args, kwargs) -> int:
    x = args[0] if args else next(v for v in kwargs.values() if torch.is_tensor(v))
    return int(x.shape[0])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
