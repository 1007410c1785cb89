"""Typed configuration of ``tpo-fast curate``: dataclasses loaded from YAML with ``key=value``
overrides, in the style (and with the loader) of :mod:`tpo_fast.config`.

    cfg = load_curate_config("configs/curate_synthetic.yaml", ["mix.target_size=2000"])
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from tpo_fast.config import ConfigError, build_config, read_config_tree

TASK_TYPES = ("temporal", "action", "causal", "information_extraction", "descriptive",
              "summarisation", "object", "spatial")


@dataclass
class InputConfig:
    videos: str = ""  # a folder of videos, or a JSONL manifest {video, [captions], [segments], ...}
    video_root: str | None = None  # relative manifest paths resolve here (default: its folder)
    extensions: list[str] = field(
        default_factory=lambda: [".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v"])
    limit: int = 0  # use only the first N videos (0: all)


@dataclass
class PolicyConfig:
    kind: str = "hf"  # hf (a video LLM) | annotation (answers from the manifest's events)
    path: str | None = None  # a local Hugging Face model directory
    tiny: str | None = None  # or a tiny random model of this family (tests)
    dtype: str = "bfloat16"  # float32 | bfloat16 | float16
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    batch_size: int = 8  # answers generated together
    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    system_prompt: str | None = None
    decode_workers: int = 2  # background video-decoding threads
    video_backend: str = "auto"  # auto (CUDA: DALI GPU, else PyAV) | pyav | dali_cpu | dali_gpu
    decode_device: str = "auto"  # auto (the policy model's device) | cpu | cuda | cuda:N
    video_threads: int = 2  # FFmpeg / DALI threads per decode


@dataclass
class LLMConfig:
    """A text LLM (the query writer or the judge)."""

    kind: str = "annotation"  # annotation | openai | hf | policy (the policy model, text only)
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
    dtype: str = "bfloat16"  # hf only
    device: str = "auto"  # hf only


@dataclass
class CaptionConfig:
    source: str = "auto"  # auto (manifest captions, else the policy) | given | policy
    windows: int = 8  # caption windows per video when the policy captions
    frames: int = 8  # frames per caption window
    prompt: str = "Describe in detail what happens in this video clip."


@dataclass
class SegmentConfig:
    per_video: int = 3  # localized targets per video (manifest segments replace them)
    lengths: list[float] = field(default_factory=lambda: [4.0, 8.0])  # seconds, cycled
    comprehensive: bool = True  # one whole-video target per video


@dataclass
class QueryConfig:
    localized_tasks: list[str] = field(default_factory=lambda: [
        "temporal", "action", "causal", "information_extraction", "descriptive", "object",
        "spatial"])
    comprehensive_tasks: list[str] = field(default_factory=lambda: [
        "summarisation", "temporal", "causal", "descriptive", "action", "object",
        "information_extraction", "spatial"])
    tasks_per_target: int = 1  # task types drawn per target (seeded); 0: every listed type


@dataclass
class ResponseConfig:
    frames: int = 32  # frames of the chosen plans (segment, uniform)
    incomplete_fraction: float = 0.5  # localized rejected: share `incomplete` (rest: complement)
    incomplete_keep: float = 0.5  # incomplete plan: share of the segment's frames kept
    downsample_factor: int = 4  # comprehensive rejected: uniform frames / factor


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


@dataclass
class MixConfig:
    localized: float = 5.0  # localized : comprehensive ratio (TPO: 5:5)
    comprehensive: float = 5.0
    target_size: int = 0  # pairs in the output (0: as many as the ratio allows)
    fill: bool = False  # top up from the other kind when one kind is short


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
        for ok, message in self._checks():
            if not ok:
                raise ConfigError(message)
        return self

    def _checks(self) -> list[tuple[bool, str]]:
        p, r, m = self.policy, self.responses, self.mix
        checks = [
            (self.input.videos, "input.videos (a folder or a JSONL manifest) must be set"),
            (p.kind in ("hf", "annotation"),
             f"policy.kind must be hf or annotation, got {p.kind!r}"),
            (p.kind != "hf" or bool(p.path) != bool(p.tiny),
             "policy.kind=hf needs exactly one of policy.path or policy.tiny"),
            (p.batch_size >= 1 and p.max_new_tokens >= 1,
             "policy.batch_size and policy.max_new_tokens must be >= 1"),
            (p.video_backend in ("auto", "pyav", "dali_cpu", "dali_gpu"),
             f"policy.video_backend must be auto, pyav, dali_cpu or dali_gpu, got "
             f"{p.video_backend!r}"),
            (p.decode_device in ("auto", "cpu") or p.decode_device.split(":")[0] == "cuda",
             f"policy.decode_device must be auto, cpu, cuda or cuda:N, got {p.decode_device!r}"),
            (p.video_threads >= 1, "policy.video_threads must be >= 1"),
            (self.captions.source in ("auto", "given", "policy"),
             "captions.source must be auto, given or policy"),
            (self.captions.windows >= 1 and self.captions.frames >= 1,
             "captions.windows and captions.frames must be >= 1"),
            (self.segments.per_video >= 0, "segments.per_video must be >= 0"),
            (self.segments.lengths and all(x > 0 for x in self.segments.lengths),
             "segments.lengths must be positive seconds"),
            (self.queries.tasks_per_target >= 0, "queries.tasks_per_target must be >= 0"),
            (r.frames >= 1, "responses.frames must be >= 1"),
            (0 <= r.incomplete_fraction <= 1, "responses.incomplete_fraction must be in [0, 1]"),
            (0 < r.incomplete_keep < 1, "responses.incomplete_keep must be in (0, 1)"),
            (r.downsample_factor >= 2, "responses.downsample_factor must be >= 2"),
            (0 < self.filter.near_identical <= 1, "filter.near_identical must be in (0, 1]"),
            (m.localized >= 0 and m.comprehensive >= 0 and m.localized + m.comprehensive > 0,
             "mix.localized and mix.comprehensive must be >= 0, not both 0"),
            (m.target_size >= 0, "mix.target_size must be >= 0"),
        ]
        for name in ("localized_tasks", "comprehensive_tasks"):
            bad = [t for t in getattr(self.queries, name) if t not in TASK_TYPES]
            checks.append((not bad, f"queries.{name}: unknown task type(s) {bad}; choose from "
                                    f"{list(TASK_TYPES)}"))
        bad_rules = [x for x in self.filter.rules if x not in RULES]
        checks.append((not bad_rules, f"filter.rules: unknown rule(s) {bad_rules}; choose from "
                                      f"{list(RULES)}"))
        for name in ("query", "judge"):
            llm = getattr(self, name)
            checks += [
                (llm.kind in ("annotation", "openai", "hf", "policy"),
                 f"{name}.kind must be annotation, openai, hf or policy, got {llm.kind!r}"),
                (llm.kind != "openai" or llm.model, f"{name}.kind=openai needs {name}.model"),
                (llm.kind != "hf" or bool(llm.model) != bool(llm.tiny),
                 f"{name}.kind=hf needs exactly one of {name}.model or {name}.tiny"),
                (llm.kind != "policy" or p.kind == "hf",
                 f"{name}.kind=policy needs policy.kind=hf"),
                (llm.concurrency >= 1 and llm.batch_size >= 1 and llm.max_retries >= 0,
                 f"{name}.concurrency and {name}.batch_size must be >= 1, max_retries >= 0"),
                (llm.timeout_s > 0, f"{name}.timeout_s must be > 0"),
            ]
        return checks

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
