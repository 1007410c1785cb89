"""One TPODPOTrainer run for tests/test_trl_dropin.py's process-count test:
``trl_zero3_worker.py FOLDER OUT.json PER_DEVICE_BATCH`` (plain ``python``: 1 process;
under ``accelerate launch`` with a DeepSpeed ZeRO-3 config: every rank). Rank 0 writes the logged
steps to OUT.json.

On CPU, the line marked below is what a TRL script adds to run under accelerate + DeepSpeed
(``tpo_fast.integrations.trl.deepspeed_on_cpu``: accelerate 1.16 finds no distributed backend for
a CPU-only torch, so the run would be single-process; its docstring says where and why).
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))


def main(folder: str, out: str, per_device: int) -> None:
    import trl_dpo as ex
    from trl import DPOConfig

    from tpo_fast.integrations.trl import TPODPOTrainer, deepspeed_on_cpu

    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false") == "true"
    args = DPOConfig(output_dir=str(Path(out).parent / "run"),
                     per_device_train_batch_size=per_device, max_steps=3, logging_steps=1,
                     report_to=[], use_cpu=not deepspeed, save_strategy="no", learning_rate=1e-2,
                     seed=0, beta=0.5, bf16=False, gradient_checkpointing=False,
                     loss_type=["sigmoid"],
                     accelerator_config=deepspeed_on_cpu())  # the CPU line (see the docstring)
    trainer = TPODPOTrainer(model=folder, args=args,
                            train_dataset=ex.image_preference_dataset(n_rows=6),
                            processing_class=ex.image_processor_only(folder))
    partitioned = sum(getattr(p, "ds_numel", 0) > getattr(p, "ds_tensor", p).numel()
                      for p in trainer.model.parameters())
    trainer.train()
    acc = trainer.accelerator
    if acc.is_main_process:
        logs = [h for h in trainer.state.log_history if "loss" in h]
        stage = acc.state.deepspeed_plugin.zero_stage if deepspeed else 0
        Path(out).write_text(json.dumps({
            "world": acc.num_processes, "partitioned": partitioned,
            "distributed_type": str(acc.distributed_type), "zero_stage": stage, "logs": logs}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
