"""A model folder as published: its tokenizer with the chat template from wherever the folder
keeps it, its processor files, and the model class its config names.

Chat templates live in one of two places in published folders: the tokenizer's
(``chat_template.jinja`` or ``tokenizer_config.json``'s ``chat_template``), or only the
processor's — ``chat_template.json`` (``{"chat_template": "..."}``, as older llava-hf folders
keep it) or ``processor_config.json``'s ``chat_template``. ``load_tokenizer`` gives the tokenizer
the processor's template where it has none, so every prompt (train, ref-logps, eval, curate) is
rendered with the folder's own template.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

# the processor's files (besides the tokenizer's) that a model folder carries
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json",
                   "video_preprocessor_config.json", "chat_template.json", "chat_template.jinja")


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def processor_chat_template(folder) -> str | None:
    """The processor's chat template of a model folder (``chat_template.json``, else
    ``processor_config.json``'s ``chat_template``), or None."""
    folder = Path(folder)
    for name in ("chat_template.json", "processor_config.json"):
        path = folder / name
        if path.is_file():
            template = _json(path).get("chat_template")
            if template is not None:
                if not isinstance(template, str):
                    raise ValueError(f"{path}: chat_template must be a string, got "
                                     f"{type(template).__name__}")
                return template
    return None


def load_tokenizer(folder):
    """The folder's tokenizer (the class its ``tokenizer_config.json`` names); where it has no
    chat template, the processor's."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config = Path(folder) / "tokenizer_config.json"
    named = _json(config).get("tokenizer_class") if config.is_file() else None
    if named in ("TokenizersBackend", "PreTrainedTokenizerFast"):
        # the folder's tokenizer.json as it is: AutoTokenizer replaces this class by the model
        # type's registered one for some families (transformers' list of hub folders with a
        # wrong tokenizer_class, e.g. HyperCLOVAX -> GPT2Tokenizer), which re-reads the file
        tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    else:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    if not getattr(tokenizer, "chat_template", None):
        template = processor_chat_template(folder)
        if template is not None:
            tokenizer.chat_template = template
    return tokenizer


def model_class(config):
    """The transformers class that builds a video LLM of ``config`` (image-text-to-text where
    the family is registered there, else its multimodal or causal-LM class)."""
    from transformers import AutoModelForImageTextToText
    from transformers.models.auto import modeling_auto

    if config.model_type in modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return AutoModelForImageTextToText
    import transformers

    for names in (modeling_auto.MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES,
                  modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
        if config.model_type in names:
            return getattr(transformers, names[config.model_type])
    raise ValueError(f"no model class for {config.model_type!r}")


def load_model(folder, dtype, zero3_config: dict | None = None):
    """The model of a folder: the LLaVA-NeXT layout (LongVA, LLaVA-Video) through
    ``load_llava_next``, a transformers folder through its family's class
    (``from_pretrained``)."""
    from transformers import AutoConfig

    from tpo_fast.models.llava_next_layout import is_llava_next_checkpoint, load_llava_next

    if is_llava_next_checkpoint(folder):  # LLaVA-NeXT layout: not a transformers class
        return load_llava_next(folder, dtype=dtype, zero3_config=zero3_config)
    config = AutoConfig.from_pretrained(folder)
    return model_class(config).from_pretrained(folder, dtype=dtype)


def copy_processor_files(source, target) -> list[str]:
    """Copy the processor's files of folder ``source`` that ``target`` lacks (an exported
    checkpoint keeps the preprocessing and template it was trained with); returns the names."""
    if not source or not Path(source).is_dir():
        return []
    copied = []
    for name in PROCESSOR_FILES:
        src, dst = Path(source) / name, Path(target) / name
        if src.is_file() and not dst.exists():
            shutil.copyfile(src, dst)
            copied.append(name)
    return copied


__all__ = ["PROCESSOR_FILES", "copy_processor_files", "load_model", "load_tokenizer",
           "model_class", "processor_chat_template"]
