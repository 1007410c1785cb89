"""One TPODPOTrainer run for tests/test_trl_dropin.py's process-count test:
``trl_zero3_worker.py FOLDER OUT.json PER_DEVICE_BATCH [VIDEO_ROWS.json]`` (plain ``python``:
1 process; under ``accelerate launch`` with a DeepSpeed ZeRO-3 config: every rank): 3 steps on
image pairs, then 3 steps on the video rows; rank 0 writes the logged steps to OUT.json.

On CPU, the line marked below is what a TRL script adds to run under accelerate + DeepSpeed
(``tpo_fast.integrations.trl.deepspeed_on_cpu``: accelerate 1.16 finds no distributed backend for
a CPU-only torch, so the run would be single-process; its docstring says where and why).
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))


def run(folder: str, out: Path, per_device: int, deepspeed: bool, video_rows=None) -> dict:
    import trl_dpo as ex
    from datasets import Dataset
    from trl import DPOConfig

    from tpo_fast.config import DataConfig, DecodeConfig
    from tpo_fast.integrations.trl import TPODPOTrainer, deepspeed_on_cpu

    if deepspeed:  # a second Trainer in this process: accelerate allows one DeepSpeed
        from accelerate.state import AcceleratorState  # Accelerator per process state

        AcceleratorState._reset_state()  # (the PartialState, with its gloo group, stays)
    args = DPOConfig(output_dir=str(out), per_device_train_batch_size=per_device, max_steps=3,
                     logging_steps=1, report_to=[], use_cpu=not deepspeed, save_strategy="no",
                     learning_rate=1e-2, seed=0, beta=0.5, bf16=False,
                     gradient_checkpointing=False, loss_type=["sigmoid"],
                     accelerator_config=deepspeed_on_cpu())  # the CPU line (see the docstring)
    if video_rows is None:
        data, video, decode = ex.image_preference_dataset(n_rows=6), None, None
    else:
        data, video, decode = (Dataset.from_list(video_rows), DataConfig(frames=4),
                               DecodeConfig(backend="pyav"))
    trainer = TPODPOTrainer(model=folder, args=args, train_dataset=data,
                            processing_class=ex.image_processor_only(folder), video_data=video,
                            video_decode=decode)
    partitioned = sum(getattr(p, "ds_numel", 0) > getattr(p, "ds_tensor", p).numel()
                      for p in trainer.model.parameters())
    trainer.train()
    acc = trainer.accelerator
    return {"world": acc.num_processes, "partitioned": partitioned,
            "distributed_type": str(acc.distributed_type),
            "zero_stage": acc.state.deepspeed_plugin.zero_stage if deepspeed else 0,
            "logs": [h for h in trainer.state.log_history if "loss" in h]}


def main(folder: str, out: str, per_device: int, video_rows: str | None = None) -> None:
    """The image run, then (with ``video_rows``, a JSON list of TRL video rows) the video run."""
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false") == "true"
    result = {"image": run(folder, Path(out).parent / "image", per_device, deepspeed)}
    if video_rows is not None:
        rows = json.loads(Path(video_rows).read_text())
        result["video"] = run(folder, Path(out).parent / "video", per_device, deepspeed, rows)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(out).write_text(json.dumps(result))
    import torch.distributed as dist

    if deepspeed and dist.is_initialized():  # launched: end the group before the interpreter
        # does (two engines' threads otherwise abort at exit); in-process it is the caller's
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), *sys.argv[4:5])
