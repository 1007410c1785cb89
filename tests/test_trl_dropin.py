"""tpo_fast.integrations.trl: TRL's DPOTrainer with the packed forward and the fused loss.

The oracle is stock TRL itself: the same tiny Qwen2-VL folder, the same TRL-format image
preference dataset, the same DPOConfig and seed, 3 steps of ``trl.DPOTrainer`` and 3 steps of
``TPODPOTrainer`` (float32, no dropout): every step's loss and every metric TRL logs agree to
float32 tolerance, for loss types sigmoid, ipo and apo_zero.

The dataset rows are laid out as TRL's own image test data: ``conversational_preference`` of
trl-internal-testing/zen-image, written by huggingface/trl
``scripts/generate_zen_image_dataset.py`` (``Features(prompt=Message, chosen=Message,
rejected=Message, images=List(Image()))``, messages ``{"role", "content": str}``, one uint8
image of 32-63 px a side per row). The chat template is Qwen/Qwen2-VL-2B-Instruct's
(``tokenizer_config.json``), which renders an image part as
``<|vision_start|><|image_pad|><|vision_end|>``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("trl")

# Qwen/Qwen2-VL-2B-Instruct, tokenizer_config.json "chat_template"
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

# rows 0-5 of zen-image's conversational_preference (generate_zen_image_dataset.py)
PROMPTS = ["What is better than ugly?", "What is better than implicit?",
           "What is better than complex?", "What is better than complicated?",
           "What is better than nested?", "What is better than dense?"]
CHOSEN = ["Beautiful.", "Explicit.", "Simple.", "Complex.", "Flat.", "Sparse."]
REJECTED = ["Acceptable.", "Explained.", "Very complex.", "Very complicated.", "Circular.",
            "Heavy."]
WORDS = sorted({w.strip("?.") for s in PROMPTS + CHOSEN + REJECTED for w in s.split()}
               | {"You", "helpful", "assistant", "a", "are"})


def image_preference_dataset(seed: int = 0):
    from datasets import Dataset, Features, Image, List, Value

    message = [{"content": Value("string"), "role": Value("string")}]
    rng = np.random.default_rng(seed)
    sizes = rng.integers(32, 64, size=(len(PROMPTS), 2))
    data = {
        "prompt": [[{"role": "user", "content": p}] for p in PROMPTS],
        "chosen": [[{"role": "assistant", "content": c}] for c in CHOSEN],
        "rejected": [[{"role": "assistant", "content": r}] for r in REJECTED],
        "images": [[rng.uniform(0.0, 255.0, size=(h, w, 3)).astype(np.uint8)] for h, w in sizes],
    }
    return Dataset.from_dict(data, features=Features(prompt=message, chosen=message,
                                                     rejected=message, images=List(Image())))


def image_processor_only(folder):
    """The folder's Qwen2VLProcessor without its video processor: Qwen2VLVideoProcessor needs
    torchvision, which does not load beside the CPU torch of CI (ENVIRONMENT.md). The image
    processor is transformers' own PIL one, configured from the folder."""
    from transformers import AutoTokenizer, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import \
        Qwen2VLImageProcessorPil

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        def check_argument_for_proper_class(self, name, arg):
            return None if arg is None else super().check_argument_for_proper_class(name, arg)

    return ImageOnlyQwen2VLProcessor(
        image_processor=Qwen2VLImageProcessorPil.from_pretrained(folder),
        tokenizer=AutoTokenizer.from_pretrained(folder), chat_template=QWEN2_VL_TEMPLATE)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from tpo_fast.models.tiny_folders import save_tiny_model

    return save_tiny_model("qwen2_vl", tmp_path_factory.mktemp("qwen2_vl"), words=WORDS)


def config(out, **kwargs):
    from trl import DPOConfig

    return DPOConfig(output_dir=str(out), per_device_train_batch_size=2, max_steps=3,
                     logging_steps=1, report_to=[], use_cpu=True, save_strategy="no",
                     learning_rate=1e-2, seed=0, beta=0.5, bf16=False,
                     gradient_checkpointing=False, **kwargs)


def train_logs(trainer_class, folder, out, **kwargs) -> list[dict]:
    trainer = trainer_class(model=str(folder), args=config(out, **kwargs),
                            train_dataset=image_preference_dataset(),
                            processing_class=image_processor_only(folder))
    trainer.train()
    return [h for h in trainer.state.log_history if "loss" in h]


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "apo_zero"])
def test_three_steps_equal_stock_dpo_trainer(folder, tmp_path, loss_type):
    from trl import DPOTrainer

    from tpo_fast.integrations.trl import TPODPOTrainer

    stock = train_logs(DPOTrainer, folder, tmp_path / "stock", loss_type=[loss_type])
    ours = train_logs(TPODPOTrainer, folder, tmp_path / "ours", loss_type=[loss_type])
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
    from tpo_fast.integrations.trl import UnsupportedConfigError, loss_options

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
