"""tpo_fast.integrations.trl: TRL's DPOTrainer with the packed forward and the fused loss.

The oracle is stock TRL itself: the same tiny Qwen2-VL folder, the same TRL-format image
preference dataset, the same DPOConfig and seed, 3 steps of ``trl.DPOTrainer`` and 3 steps of
``TPODPOTrainer`` (float32, no dropout): every step's loss and every metric TRL logs agree to
float32 tolerance, for loss types sigmoid, ipo and apo_zero. Two of the six training rows hold
two images (TRL's ``images`` is a list per row): both go through the packed image path.

The model, data and processor come from examples/trl_dpo.py: the dataset rows are laid out as
TRL's own image test data (``conversational_preference`` of trl-internal-testing/zen-image,
written by huggingface/trl ``scripts/generate_zen_image_dataset.py``: ``Features(prompt=Message,
chosen=Message, rejected=Message, images=List(Image()))``, messages ``{"role", "content": str}``,
one uint8 image of 32-63 px a side per row); the chat template is Qwen/Qwen2-VL-2B-Instruct's
(``tokenizer_config.json``), which renders an image part as
``<|vision_start|><|image_pad|><|vision_end|>``.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

pytest.importorskip("trl")

from helpers import ROOT, free_port, subprocess_env


def load_example():
    spec = importlib.util.spec_from_file_location("trl_dpo", ROOT / "examples" / "trl_dpo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ex = load_example()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return ex.tiny_folder(tmp_path_factory.mktemp("qwen2_vl"))


def config(out, **kwargs):
    from trl import DPOConfig

    return DPOConfig(output_dir=str(out), per_device_train_batch_size=2, max_steps=3,
                     logging_steps=1, report_to=[], use_cpu=True, save_strategy="no",
                     learning_rate=1e-2, seed=0, beta=0.5, bf16=False,
                     gradient_checkpointing=False, **kwargs)


def train_logs(trainer_class, folder, out, **kwargs) -> tuple[list[dict], dict]:
    """The logged training steps, and an evaluation of the trained model on other rows."""
    trainer = trainer_class(model=str(folder), args=config(out, **kwargs),
                            train_dataset=ex.image_preference_dataset(two_image_rows=(1, 4)),
                            eval_dataset=ex.image_preference_dataset(n_rows=4, seed=1),
                            processing_class=ex.image_processor_only(folder))
    trainer.train()
    evaluation = trainer.evaluate()
    return [h for h in trainer.state.log_history if "loss" in h], evaluation


# apo_zero also truncates: max_length 30 leaves the responses after the 28-token prompts of the
# two-image rows 2 of their 3 tokens (TRL's keep_start cut of each prompt + response row)
@pytest.mark.parametrize("loss_type,options", [("sigmoid", {}), ("ipo", {}),
                                               ("apo_zero", {"max_length": 30})])
def test_three_steps_equal_stock_dpo_trainer(folder, tmp_path, loss_type, options):
    from trl import DPOTrainer

    from tpo_fast.integrations.trl import TPODPOTrainer

    stock, stock_eval = train_logs(DPOTrainer, folder, tmp_path / "stock",
                                   loss_type=[loss_type], **options)
    ours, our_eval = train_logs(TPODPOTrainer, folder, tmp_path / "ours",
                                loss_type=[loss_type], **options)
    assert len(stock) == len(ours) == 3
    names = {"loss", "grad_norm", "entropy", "num_tokens", "logits/chosen", "logits/rejected",
             "mean_token_accuracy", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
             "rewards/margins", "logps/chosen", "logps/rejected"}
    assert names <= set(stock[0]), sorted(set(stock[0]))
    for step, (a, b) in enumerate(zip(stock, ours)):
        assert set(a) == set(b), (step, sorted(set(a) ^ set(b)))
        for name in names:
            assert math.isclose(a[name], b[name], rel_tol=1e-5, abs_tol=2e-5), \
                (loss_type, step, name, a[name], b[name])
    # evaluation (TRL's prediction_step): the loss and the same metrics, prefixed eval_
    for name in names - {"grad_norm", "num_tokens"}:
        key = f"eval_{name}"
        assert math.isclose(stock_eval[key], our_eval[key], rel_tol=1e-5, abs_tol=2e-5), \
            (loss_type, key, stock_eval[key], our_eval[key])
    # the steps trained (the comparison is of a moving policy, not of three copies of step 0)
    assert stock[0]["rewards/margins"] == 0 and stock[-1]["rewards/margins"] != 0


@pytest.mark.parametrize("field,value", [("ld_alpha", 0.5), ("use_weighting", True),
                                         ("f_divergence_type", "forward_kl"),
                                         ("precompute_ref_log_probs", True)])
def test_unsupported_config_fields_raise_naming_the_field(tmp_path, field, value):
    from tpo_fast.integrations.trl import UnsupportedConfigError, check_config

    check_config(config(tmp_path))
    with pytest.raises(UnsupportedConfigError, match=f"DPOConfig.{field}="):
        check_config(config(tmp_path, **{field: value}))


def test_loss_options_follow_trl_loss_lists(tmp_path):
    from tpo_fast.integrations.trl import UnsupportedConfigError, loss_options, loss_spec

    # TRL 1.16's RPO: "sft" in the list is the chosen-token mean NLL with its weight
    got = loss_options(config(tmp_path, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.7]))
    assert got["loss_type"] == ["sigmoid"] and got["loss_weights"] == [1.0]
    assert got["sft_weight"] == 0.7 and got["label_smoothing"] == 0.0
    # label smoothing reaches the types that use it in TRL 1.16 only
    assert loss_options(config(tmp_path, label_smoothing=0.1))["label_smoothing"] == 0.0
    assert loss_options(config(tmp_path, loss_type=["robust"],
                               label_smoothing=0.1))["label_smoothing"] == 0.1
    with pytest.raises(UnsupportedConfigError, match="'aot'"):
        loss_options(config(tmp_path, loss_type=["aot"]))
    # discopop_tau reaches the spec with the type that uses it only (TRL ignores it otherwise)
    assert loss_spec(config(tmp_path, discopop_tau=0.1)).loss_type == ("sigmoid",)
    assert loss_spec(config(tmp_path, loss_type=["discopop"], discopop_tau=0.1)).discopop_tau == 0.1


# ---- video pairs: the drop-in equals `tpo-fast train` on the same rows ------------------------
# TRL 1.16 defines no video column; the rows are TRL's conversational preference rows with a
# {"type": "video"} content part (as TRL's trl/chat_templates/qwen2_5_vl.jinja reads it) and a
# `videos` column mirroring `images` — the layout tpo_fast/data/formats.py reads (its tests:
# tests/test_data_formats.py::_trl_rows).

def video_rows(tmp_path, n_pairs: int = 2) -> list[dict]:
    from tpo_fast.synthetic.pairs import make_pairs

    make_pairs(tmp_path, n_pairs=n_pairs, n_videos=n_pairs, seed=3, size=32, n_frames=8)
    rows = []
    for i in range(n_pairs):
        prompt = [{"role": "user", "content": [{"type": "video", "text": None},
                                               {"type": "text", "text": ex.PROMPTS[i]}]}]
        rows.append({"prompt": prompt,
                     "chosen": [{"role": "assistant", "content": ex.CHOSEN[i]}],
                     "rejected": [{"role": "assistant", "content": ex.REJECTED[i]}],
                     "videos": [str(tmp_path / "videos" / f"video_{i:03d}.mp4")]})
    return rows


def test_video_pairs_equal_tpo_fast_train(folder, tmp_path):
    """Three steps of the drop-in on TRL-format video rows (a `datasets.Dataset`) and three steps
    of `tpo-fast train` (the Trainer the CLI runs, in-process) on the same rows as JSONL: same
    folder, beta 0.5, sigmoid, lr 1e-2 constant, AdamW (no weight decay), clip 1.0, 2 pairs a
    step (the same 2 pairs each step: one epoch is one step, so the data order is not a
    variable), every weight trained (the vision tower too: TRL trains it): every step's loss and
    reward margin agree."""
    import json

    from datasets import Dataset

    from tpo_fast.config import DataConfig, DecodeConfig, load_config
    from tpo_fast.integrations.trl import TPODPOTrainer
    from tpo_fast.train.loop import Trainer
    from tpo_fast.train.metrics import read_metrics

    rows = video_rows(tmp_path / "data")
    pairs_file = tmp_path / "data" / "trl_videos.jsonl"
    pairs_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    video, decode = {"frames": 4}, {"backend": "pyav", "workers": 1}

    cfg = load_config(None, [
        f"model.path={folder}", "model.dtype=float32", "model.train_vision_tower=true",
        f"data.train={pairs_file}", *[f"data.{k}={v}" for k, v in video.items()],
        *[f"decode.{k}={v}" for k, v in decode.items()],
        "loss.beta=0.5", "loss.loss_type=sigmoid", "loss.reference=model", "optim.lr=1e-2",
        "optim.scheduler=constant", "optim.warmup_ratio=0", "optim.epochs=3", "optim.max_steps=3",
        "optim.global_batch_size=2", "optim.max_grad_norm=1.0", "deepspeed.zero_stage=0",
        f"run.output_dir={tmp_path / 'tpo'}", "run.progress=false", "run.tensorboard=false",
        "run.plot=false", "run.resume=never"])
    Trainer(cfg).run()
    ours_cli = read_metrics(tmp_path / "tpo" / "metrics.jsonl")

    trainer = TPODPOTrainer(
        model=str(folder), args=config(tmp_path / "trl", loss_type=["sigmoid"],
                                       lr_scheduler_type="constant", max_grad_norm=1.0),
        train_dataset=Dataset.from_list(rows), processing_class=ex.image_processor_only(folder),
        video_data=DataConfig(**video), video_decode=DecodeConfig(**decode))
    trainer.train()
    dropin = [h for h in trainer.state.log_history if "loss" in h]

    assert len(ours_cli) == len(dropin) == 3
    for step, (a, b) in enumerate(zip(ours_cli, dropin)):
        assert a["pairs"] == 2
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-5, abs_tol=2e-5), \
            (step, a["loss"], b["loss"])
        assert math.isclose(a["reward_margin"], b["rewards/margins"], rel_tol=1e-5,
                            abs_tol=2e-5), (step, a["reward_margin"], b["rewards/margins"])
    # the policy moved (three different steps, not three copies of step 0)
    assert dropin[0]["rewards/margins"] == 0 and dropin[-1]["rewards/margins"] != 0
    assert abs(dropin[-1]["loss"] - dropin[0]["loss"]) > 1e-4


# ---- accelerate launch + DeepSpeed ZeRO-3, 2 processes (gloo, CPU) equals 1 process ----------
# The accelerate config is TRL's examples/accelerate_configs/deepspeed_zero3.yaml (huggingface/trl)
# with num_processes 2 and mixed_precision "no" (float32 on CPU); its DeepSpeed section points to
# a ZeRO-3 config file that partitions every parameter (persistence threshold 0) and keeps none
# gathered between uses (reuse distance, live parameters 0), so the LM head the fused loss reads
# is a partitioned parameter.
ZERO3_ACCELERATE = {
    "compute_environment": "LOCAL_MACHINE", "debug": False,
    "deepspeed_config": {"deepspeed_multinode_launcher": "standard", "zero3_init_flag": True},
    "distributed_type": "DEEPSPEED", "downcast_bf16": "no", "machine_rank": 0,
    "main_training_function": "main", "num_machines": 1, "num_processes": 2,
    "rdzv_backend": "static", "same_network": True, "tpu_env": [], "tpu_use_cluster": False,
    "tpu_use_sudo": False, "use_cpu": False}
ZERO3_DEEPSPEED = {
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0,
                          "stage3_max_reuse_distance": 0, "stage3_max_live_parameters": 0,
                          "stage3_prefetch_bucket_size": 0,
                          "stage3_gather_16bit_weights_on_model_save": True},
    "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
    "gradient_accumulation_steps": "auto", "gradient_clipping": "auto"}


@pytest.mark.slow
@pytest.mark.multiprocess_cpu
def test_accelerate_zero3_two_processes_equal_one(folder, tmp_path):
    """3 steps of the drop-in on image pairs, then 3 on video pairs (sigmoid, 2 pairs a step;
    the 4 video rows: 2 steps of one epoch, then the second epoch's first) as 1 plain process
    (per-device batch 2, in this process) and as 2 ranks under ``accelerate launch`` +
    DeepSpeed ZeRO-3 (gloo, per-device batch 1, the model partitioned at load by zero.Init):
    every step's loss, reward margin, log-probs and gradient norm agree. Without
    ``deepspeed_on_cpu()`` the 2-rank run stops in DeepSpeed's batch check (``1 != 1 * 1 * 2``:
    the Trainer counts one process)."""
    import json
    import subprocess
    import sys

    import yaml

    ds = tmp_path / "ds_zero3.json"
    ds.write_text(json.dumps(ZERO3_DEEPSPEED))
    acc = dict(ZERO3_ACCELERATE)
    acc["deepspeed_config"] = dict(acc["deepspeed_config"], deepspeed_config_file=str(ds))
    config_file = tmp_path / "deepspeed_zero3.yaml"
    config_file.write_text(yaml.safe_dump(acc))
    rows = tmp_path / "video_rows.json"
    rows.write_text(json.dumps(video_rows(tmp_path / "data", n_pairs=4)))
    worker = str(Path(__file__).resolve().parent / "trl_zero3_worker.py")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
           "--main_process_port", free_port(), worker, str(folder), str(tmp_path / "two.json"),
           "1", str(rows)]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # the 1-process run: the same worker in this process (plain Trainer, no DeepSpeed)
    spec = importlib.util.spec_from_file_location("trl_zero3_worker", worker)
    one_process = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(one_process)
    one_process.main(str(folder), str(tmp_path / "one.json"), 2, str(rows))
    one_runs = json.loads((tmp_path / "one.json").read_text())
    two_runs = json.loads((tmp_path / "two.json").read_text())
    for kind in ("image", "video"):
        one, two = one_runs[kind], two_runs[kind]
        assert one["world"] == 1 and one["zero_stage"] == 0
        assert two["world"] == 2 and two["zero_stage"] == 3
        assert two["distributed_type"] == "DistributedType.DEEPSPEED"
        assert two["partitioned"] > 0  # ZeRO-3 really holds the weights sharded
        assert len(one["logs"]) == len(two["logs"]) == 3
        for step, (a, b) in enumerate(zip(one["logs"], two["logs"])):
            for name in ("loss", "rewards/margins", "logps/chosen", "logps/rejected",
                         "grad_norm", "num_tokens"):
                assert math.isclose(a[name], b[name], rel_tol=1e-5, abs_tol=2e-5), \
                    (kind, step, name, a[name], b[name])
        assert one["logs"][-1]["rewards/margins"] != 0


def test_bad_video_rows_name_the_example(folder, tmp_path):
    """A missing video file, a row with two videos and a micro-batch mixing image and video rows
    stop with an error naming the example (and the file)."""
    from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration

    from tpo_fast.config import DataConfig, DecodeConfig
    from tpo_fast.integrations.trl import (
        PairCollator,
        UnsupportedConfigError,
        VideoPairs,
    )
    from tpo_fast.models import adapter_for

    adapter = adapter_for(Qwen2VLForConditionalGeneration.from_pretrained(folder))
    video = VideoPairs(adapter, AutoTokenizer.from_pretrained(folder), DataConfig(frames=4),
                       DecodeConfig(backend="pyav"))
    collate = PairCollator(ex.image_processor_only(folder), video=video)
    rows = video_rows(tmp_path)
    good = collate(rows)["pairs"]
    assert good.kind == "video" and len(good.prompt_ids) == 2
    assert good.prompt_ids[0].count(adapter.video_token_id) == \
        adapter.num_video_tokens(good.visuals[0])
    missing = dict(rows[1], videos=[str(tmp_path / "nowhere.mp4")])
    with pytest.raises(ValueError, match=r"example 1: .*nowhere\.mp4"):
        collate([rows[0], missing])
    two = dict(rows[0], videos=rows[0]["videos"] + rows[1]["videos"])
    with pytest.raises(ValueError, match="example 0: .*2 videos"):
        collate([two])
    image_row = ex.image_preference_dataset(n_rows=1)[0]
    with pytest.raises(UnsupportedConfigError, match="example 1 has no video"):
        collate([rows[0], image_row])
    with pytest.raises(UnsupportedConfigError, match="example 1 has a video"):
        collate([image_row, rows[0]])
