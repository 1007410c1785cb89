"""TRL's DPOTrainer, one line changed: image pairs through the packed forward and fused loss.

    python examples/trl_dpo.py            # a tiny random Qwen2-VL folder, CPU, ~30 s
    python examples/trl_dpo.py --stock    # the same run through stock trl.DPOTrainer

The only change to a TRL script is the import::

    from tpo_fast.integrations.trl import TPODPOTrainer as DPOTrainer   # was: from trl import ...

The data are TRL's own image preference layout (trl-internal-testing/zen-image,
``conversational_preference``, written by huggingface/trl ``scripts/generate_zen_image_dataset.py``:
``prompt`` / ``chosen`` / ``rejected`` messages ``{"role", "content": str}`` and an ``images``
column of one uint8 image per row). With a real checkpoint pass its folder (or hub id) as
``model`` and ``AutoProcessor.from_pretrained(...)`` as ``processing_class``.
"""

from __future__ import annotations

import argparse

import numpy as np

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


def image_preference_dataset(n_rows: int = 6, seed: int = 0, context_words: int = 0,
                             two_image_rows: tuple[int, ...] = ()):
    """TRL's conversational image preference rows (zen-image's layout). ``context_words`` > 0
    puts that many words of text before each question (a long prompt); the rows in
    ``two_image_rows`` hold a second image (TRL's ``images`` is a list per row)."""
    from datasets import Dataset, Features, Image, List, Value

    message = [{"content": Value("string"), "role": Value("string")}]
    rng = np.random.default_rng(seed)
    sizes = rng.integers(32, 64, size=(n_rows, 2))
    k = len(PROMPTS)
    context = " ".join(WORDS[i % len(WORDS)] for i in range(context_words))
    prompts = [(context + " " if context else "") + PROMPTS[i % k] for i in range(n_rows)]
    data = {
        "prompt": [[{"role": "user", "content": p}] for p in prompts],
        "chosen": [[{"role": "assistant", "content": CHOSEN[i % k]}] for i in range(n_rows)],
        "rejected": [[{"role": "assistant", "content": REJECTED[i % k]}] for i in range(n_rows)],
        "images": [[rng.uniform(0.0, 255.0, size=(h, w, 3)).astype(np.uint8)] for h, w in sizes],
    }
    for i in two_image_rows:
        h, w = rng.integers(32, 64, size=2)
        data["images"][i].append(rng.uniform(0.0, 255.0, size=(h, w, 3)).astype(np.uint8))
    return Dataset.from_dict(data, features=Features(prompt=message, chosen=message,
                                                     rejected=message, images=List(Image())))


def image_processor_only(folder):
    """The folder's Qwen2VLProcessor without its video processor: Qwen2VLVideoProcessor needs
    torchvision, which does not load beside a CPU-only torch here. The image processor is
    transformers' own PIL one, configured from the folder. (Where torchvision works:
    ``AutoProcessor.from_pretrained(folder)``.)"""
    from transformers import AutoTokenizer, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        def check_argument_for_proper_class(self, name, arg):
            return None if arg is None else super().check_argument_for_proper_class(name, arg)

    return ImageOnlyQwen2VLProcessor(
        image_processor=Qwen2VLImageProcessorPil.from_pretrained(folder),
        tokenizer=AutoTokenizer.from_pretrained(folder), chat_template=QWEN2_VL_TEMPLATE)


def tiny_folder(path, **kwargs):
    from tpo_fast.models.tiny_folders import save_tiny_model

    return save_tiny_model("qwen2_vl", path, words=WORDS, **kwargs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stock", action="store_true", help="run stock trl.DPOTrainer")
    parser.add_argument("--out", default="/tmp/tpo_fast_trl_dpo")
    parser.add_argument("--loss-type", nargs="+", default=["sigmoid"])
    parser.add_argument("--loss-weights", nargs="+", type=float, default=None)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)

    from trl import DPOConfig

    if args.stock:
        from trl import DPOTrainer
    else:
        from tpo_fast.integrations.trl import TPODPOTrainer as DPOTrainer

    folder = tiny_folder(f"{args.out}/model")
    config = DPOConfig(output_dir=f"{args.out}/run", per_device_train_batch_size=2,
                       max_steps=args.steps, logging_steps=1, report_to=[], save_strategy="no",
                       learning_rate=1e-2, beta=0.5, bf16=False, loss_type=args.loss_type,
                       loss_weights=args.loss_weights, use_cpu=True)
    trainer = DPOTrainer(model=str(folder), args=config, train_dataset=image_preference_dataset(),
                         processing_class=image_processor_only(folder))
    trainer.train()
    for row in trainer.state.log_history:
        if "loss" in row:
            print({k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
