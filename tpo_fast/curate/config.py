"""Typed configuration of ``tpo-fast curate``: dataclasses loaded from YAML with ``key=value``
overrides, in the style (and with the loader) of :mod:`tpo_fast.config`.

    cfg = load_curate_config("configs/curate_synthetic.yaml", ["mix.target_size=2000"])
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from tpo_fast.config import (
    MOVED_TO_DECODE,
    ConfigError,
    DecodeConfig,
    Dtype,
    build_config,
    check_sections,
    read_config_tree,
    require,
)

TASK_TYPES = ("temporal", "action", "causal", "information_extraction", "descriptive",
              "summarisation", "object", "spatial")


@dataclass
class InputConfig:
    videos: str = ""  # a folder of videos, or a JSONL manifest {video, [captions], [segments], ...}
    video_root: str | None = None  # relative manifest paths resolve here (default: its folder)
    extensions: list[str] = field(
        default_factory=lambda: [".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v"])
    limit: int = 0  # use only the first N videos (0: all)

    def check(self, key: str) -> None:
        require(self.videos, f"{key}.videos (a folder or a JSONL manifest) must be set")


@dataclass
class PolicyConfig:
    kind: Literal["hf", "annotation"] = "hf"  # a video LLM | answers from the manifest's events
    path: str | None = None  # a local Hugging Face model directory
    tiny: str | None = None  # or a tiny random model of this family (tests)
    dtype: Dtype = "bfloat16"
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    batch_size: int = 8  # answers generated together
    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    system_prompt: str | None = None

    MOVED: ClassVar[dict[str, str]] = MOVED_TO_DECODE  # the decode: section has them

    def check(self, key: str) -> None:
        require(self.kind != "hf" or bool(self.path) != bool(self.tiny),
                f"{key}.kind=hf needs exactly one of {key}.path or {key}.tiny")
        require(self.batch_size >= 1 and self.max_new_tokens >= 1,
                f"{key}.batch_size and {key}.max_new_tokens must be >= 1")


@dataclass
class LLMConfig:
    """A text LLM (the query writer or the judge)."""

    # annotation | openai | hf | policy (the policy model, text only)
    kind: Literal["annotation", "openai", "hf", "policy"] = "annotation"
    model: str = ""  # endpoint model name (openai) or a local model directory (hf)
    tiny: str | None = None  # hf only: a tiny random model of this family (tests)
    base_url: str = "http://127.0.0.1:8000/v1"  # openai: the server's /v1 root
    api_key_env: str | None = None  # openai: the NAME of the env variable holding the key
    timeout_s: float = 60.0  # openai: per request
    max_retries: int = 4  # openai: retries after the first try (timeouts, 5xx, 429, bad JSON)
    backoff_s: float = 1.0  # openai: first retry delay; doubles each retry (with jitter)
    max_backoff_s: float = 30.0
    concurrency: int = 8  # openai: requests in flight at once
    temperature: float = 0.0
    max_tokens: int = 512
    batch_size: int = 16  # requests handed to the backend at once (one stage batch)
    dtype: Dtype = "bfloat16"  # hf only
    device: str = "auto"  # hf only

    def check(self, key: str) -> None:
        require(self.kind != "openai" or self.model, f"{key}.kind=openai needs {key}.model")
        require(self.kind != "hf" or bool(self.model) != bool(self.tiny),
                f"{key}.kind=hf needs exactly one of {key}.model or {key}.tiny")
        require(self.concurrency >= 1 and self.batch_size >= 1 and self.max_retries >= 0,
                f"{key}.concurrency and {key}.batch_size must be >= 1, max_retries >= 0")
        require(self.timeout_s > 0, f"{key}.timeout_s must be > 0")


@dataclass
class CaptionConfig:
    source: Literal["auto", "given", "policy"] = "auto"  # auto: manifest captions, else policy
    windows: int = 8  # caption windows per video when the policy captions
    frames: int = 8  # frames per caption window
    prompt: str = "Describe in detail what happens in this video clip."

    def check(self, key: str) -> None:
        require(self.windows >= 1 and self.frames >= 1,
                f"{key}.windows and {key}.frames must be >= 1")


@dataclass
class SegmentConfig:
    per_video: int = 3  # localized targets per video (manifest segments replace them)
    lengths: list[float] = field(default_factory=lambda: [4.0, 8.0])  # seconds, cycled
    comprehensive: bool = True  # one whole-video target per video

    def check(self, key: str) -> None:
        require(self.per_video >= 0, f"{key}.per_video must be >= 0")
        require(self.lengths and all(x > 0 for x in self.lengths),
                f"{key}.lengths must be positive seconds")


@dataclass
class QueryConfig:
    localized_tasks: list[str] = field(default_factory=lambda: [
        "temporal", "action", "causal", "information_extraction", "descriptive", "object",
        "spatial"])
    comprehensive_tasks: list[str] = field(default_factory=lambda: [
        "summarisation", "temporal", "causal", "descriptive", "action", "object",
        "information_extraction", "spatial"])
    tasks_per_target: int = 1  # task types drawn per target (seeded); 0: every listed type

    def check(self, key: str) -> None:
        require(self.tasks_per_target >= 0, f"{key}.tasks_per_target must be >= 0")
        for name in ("localized_tasks", "comprehensive_tasks"):
            bad = [t for t in getattr(self, name) if t not in TASK_TYPES]
            require(not bad, f"{key}.{name}: unknown task type(s) {bad}; choose from "
                              f"{list(TASK_TYPES)}")


@dataclass
class ResponseConfig:
    frames: int = 32  # frames of the chosen plans (segment, uniform)
    incomplete_fraction: float = 0.5  # localized rejected: share `incomplete` (rest: complement)
    incomplete_keep: float = 0.5  # incomplete plan: share of the segment's frames kept
    downsample_factor: int = 4  # comprehensive rejected: uniform frames / factor

    def check(self, key: str) -> None:
        require(self.frames >= 1, f"{key}.frames must be >= 1")
        require(0 <= self.incomplete_fraction <= 1,
                f"{key}.incomplete_fraction must be in [0, 1]")
        require(0 < self.incomplete_keep < 1, f"{key}.incomplete_keep must be in (0, 1)")
        require(self.downsample_factor >= 2, f"{key}.downsample_factor must be >= 2")


@dataclass
class FilterConfig:
    """Post-filter. Empty and exactly identical responses are always dropped."""

    rules: list[str] = field(default_factory=lambda: [
        "empty", "identical", "near_identical", "overlong", "refusal"])
    near_identical: float = 0.9  # drop when difflib similarity of chosen/rejected >= this
    max_words: int = 400  # over-long responses (either side)
    refusal_patterns: list[str] = field(default_factory=lambda: [
        "i'm sorry", "i am sorry", "i cannot", "i can't", "as an ai", "unable to answer",
        "cannot determine", "not possible to determine"])
    judge: bool = True  # run the LLM judge (TPO's three checks) on pairs the rules keep

    def check(self, key: str) -> None:
        bad = [x for x in self.rules if x not in RULES]
        require(not bad, f"{key}.rules: unknown rule(s) {bad}; choose from {list(RULES)}")
        require(0 < self.near_identical <= 1, f"{key}.near_identical must be in (0, 1]")


@dataclass
class MixConfig:
    localized: float = 5.0  # localized : comprehensive ratio (TPO: 5:5)
    comprehensive: float = 5.0
    target_size: int = 0  # pairs in the output (0: as many as the ratio allows)
    fill: bool = False  # top up from the other kind when one kind is short

    def check(self, key: str) -> None:
        require(self.localized >= 0 and self.comprehensive >= 0
                and self.localized + self.comprehensive > 0,
                f"{key}.localized and {key}.comprehensive must be >= 0, not both 0")
        require(self.target_size >= 0, f"{key}.target_size must be >= 0")


@dataclass
class CurateRunConfig:
    output_dir: str = "runs/curate"
    seed: int = 0
    rank: int = -1  # -1: from env RANK (default 0)
    world_size: int = -1  # -1: from env WORLD_SIZE (default 1)
    progress: bool = True


@dataclass
class CurateConfig:
    input: InputConfig = field(default_factory=InputConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)  # how the policy decodes
    query: LLMConfig = field(default_factory=LLMConfig)
    judge: LLMConfig = field(default_factory=LLMConfig)
    captions: CaptionConfig = field(default_factory=CaptionConfig)
    segments: SegmentConfig = field(default_factory=SegmentConfig)
    queries: QueryConfig = field(default_factory=QueryConfig)
    responses: ResponseConfig = field(default_factory=ResponseConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    run: CurateRunConfig = field(default_factory=CurateRunConfig)

    def validate(self) -> CurateConfig:
        """Raise ConfigError naming the first bad key."""
        check_sections(self)
        return self

    def check(self, key: str) -> None:
        """The checks that span sections (each section checks its own fields)."""
        for name in ("query", "judge"):
            require(getattr(self, name).kind != "policy" or self.policy.kind == "hf",
                     f"{name}.kind=policy needs policy.kind=hf")

    def rank_world(self) -> tuple[int, int]:
        """(rank, world size): the config's values, else env RANK / WORLD_SIZE, else (0, 1)."""
        world = self.run.world_size if self.run.world_size > 0 else int(
            os.environ.get("WORLD_SIZE", "1"))
        rank = self.run.rank if self.run.rank >= 0 else int(os.environ.get("RANK", "0"))
        if world < 1 or not 0 <= rank < world:
            raise ConfigError(f"rank {rank} is not in [0, world size {world})")
        return rank, world


RULES = ("empty", "identical", "near_identical", "overlong", "refusal")


def load_curate_config(path: str | Path | None = None,
                       overrides: list[str] | tuple[str, ...] = ()) -> CurateConfig:
    """Read a YAML config (or start from defaults) and apply ``key=value`` overrides."""
    return build_config(CurateConfig, read_config_tree(path, overrides)).validate()


def curate_config_to_dict(cfg: CurateConfig) -> dict:
    return dataclasses.asdict(cfg)
