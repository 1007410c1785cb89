"""Typed configuration of ``tpo-fast eval``: one dataclass read through the loader of
:mod:`tpo_fast.config` (a YAML file and ``key=value`` overrides; the CLI's flags are sugar for
keys).

    cfg = load_eval_config("eval.yaml", ["frames=64", "decode.backend=pyav"])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from tpo_fast.config import (
    MOVED_TO_DECODE,
    DecodeConfig,
    Dtype,
    build_config,
    check_sections,
    read_config_tree,
    require,
    set_dotted,
)


@dataclass
class EvalConfig:
    format: str = ""  # annotation format: videomme | mlvu | longvideobench | synthetic
    annotations: str = ""  # annotation file (MLVU: also a folder of its per-task JSON files)
    video_root: str | None = None  # folder of the videos (default: the annotation file's)
    model: str | None = None  # a local Hugging Face model folder (LongVA included)
    tiny: str | None = None  # or a random-weight tiny model of this family (tests, smoke runs)
    # frames per video (None: 32 under the lmms-eval protocol, as lmms-eval's LongVA; 8 native)
    frames: int | None = None
    # loglik: fast (option log-likelihood); generate: greedy answer, extracted; both
    method: str = "loglik"
    # auto | lmms-eval | native (auto: lmms-eval for videomme / mlvu / longvideobench, native
    # for synthetic)
    protocol: str = "auto"
    subtitles: bool = False  # videomme: lmms-eval's videomme_w_subtitle
    subtitle_root: str | None = None  # the folder of <videoID>.srt (default: beside the videos)
    system: str | None = None  # system prompt for the chat template
    lmms_eval_version: str = "0.7.3"  # or 0.3 (v0.3.0/v0.3.1): the TPO paper's era
    seed: int = 0  # longvideobench: seed of lmms-eval's random letter for answers without one
    answer_format: str = "letter"  # letter | letter_text: loglik scores "B" / "B. text"
    length_normalize: bool = False  # loglik: rank options by mean per-token log-prob
    max_new_tokens: int | None = None  # generate (None: the lmms-eval task's; native 16)
    limit: int | None = None  # evaluate only the first N questions
    batch_size: int = 4  # questions per forward
    device: str = "auto"  # auto (GPU if any) | cpu | cuda | cuda:N
    dtype: Dtype | None = None  # None: bfloat16 on GPU, float32 on CPU
    skip_invalid: bool = False  # skip malformed annotation items (counted) instead of stopping
    out: str | None = None  # write the results JSON here
    progress: bool = True
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    MOVED: ClassVar[dict[str, str]] = MOVED_TO_DECODE  # video_backend= ... are decode.* keys

    def check(self, key: str) -> None:
        from tpo_fast.eval.protocol import VERSIONS
        from tpo_fast.eval.readers import READERS
        from tpo_fast.eval.runner import METHODS, PROTOCOLS
        from tpo_fast.eval.scoring import ANSWER_FORMATS

        for name, allowed in (("format", sorted(READERS)), ("method", METHODS),
                              ("protocol", ("auto", *PROTOCOLS)), ("answer_format", ANSWER_FORMATS),
                              ("lmms_eval_version", VERSIONS)):
            value = getattr(self, name)
            require(value in allowed, f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        require(self.annotations, "annotations (the annotation file) must be set")
        require(bool(self.model) != bool(self.tiny), "set exactly one of model or tiny")
        require(self.frames is None or self.frames >= 1, "frames must be >= 1")
        require(self.batch_size >= 1, "batch_size must be >= 1")
        require(self.limit is None or self.limit >= 0, "limit must be >= 0")
        require(self.max_new_tokens is None or self.max_new_tokens >= 1,
                "max_new_tokens must be >= 1")

    def validate(self) -> EvalConfig:
        """Raise ConfigError naming the first bad key."""
        check_sections(self)
        return self


def load_eval_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                     values: dict | None = None) -> EvalConfig:
    """A YAML config (or the defaults) with ``key=value`` overrides, then ``values`` (dotted
    keys with Python values: the CLI's flags), checked."""
    tree = read_config_tree(path, overrides)
    for key, value in (values or {}).items():
        set_dotted(tree, key, value)
    return build_config(EvalConfig, tree).validate()
