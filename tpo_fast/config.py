"""Typed configuration: dataclasses loaded from YAML, with ``key=value`` overrides.

    cfg = load_config("configs/tiny.yaml", ["loss.beta=0.2", "optim.lr=1e-5"])

Unknown keys are errors that name the nearest valid key; values are type-checked; the resolved
config is written next to every checkpoint (``save_config``). Each YAML file in configs/ begins
with a comment giving the command that runs it.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key."""


@dataclass
class LoraConfig:
    r: int = 0  # 0 disables LoRA
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                 "down_proj"])


@dataclass
class ModelConfig:
    path: str | None = None  # a local Hugging Face model directory
    tiny: str | None = None  # or: a tiny random model of this family (tests, embedded default)
    tiny_layers: int = 2
    tiny_hidden: int = 32
    dtype: str = "bfloat16"  # float32 | bfloat16 | float16
    attention_backend: str = "auto"
    train_vision_tower: bool = False
    train_projector: bool = True
    gradient_checkpointing: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class DataFields:
    """Column mapping: which column of the file holds each pair field (None: the field's own
    name). E.g. ``data.fields.video=clip_path data.fields.prompt=question``."""

    video: str | None = None  # a video file, or a folder of frames
    prompt: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    frames: str | None = None  # a frame count or a list of frame indices
    fps: str | None = None  # frames per second of a frame-folder video
    ref_logps: str | None = None  # [chosen, rejected]


@dataclass
class DataConfig:
    # pairs: a .jsonl / .json / .csv / .tsv / .parquet file, a folder of parquet shards, or a
    # `datasets` save_to_disk folder
    train: str = ""
    # auto (detected from the columns) | tpo (our fields; also the LLaVA-NeXT / LLaVA-Hound-DPO
    # JSON) | trl (TRL's conversational preference format); tpo_fast/data/formats.py
    format: str = "auto"
    fields: DataFields = field(default_factory=DataFields)
    frame_fps: float = 2.0  # fps of videos given as frame folders / image lists (no field)
    synthetic: bool = False  # write tiny synthetic pairs to data.train when it is missing
    video_root: str | None = None  # relative video paths resolve here (default: the file's folder)
    frames: int = 32  # frames sampled uniformly from each video
    token_budget: int = 65536  # packed tokens per micro-batch
    drop_overlong: bool = True  # skip (and count) pairs over the budget instead of failing
    skip_invalid: bool = False  # skip (and count) malformed pairs instead of failing
    system_prompt: str | None = None
    decode_threads: int = 4
    video_backend: str = "auto"  # auto (CUDA: DALI GPU, else PyAV) | pyav | dali_cpu | dali_gpu
    decode_device: str = "auto"  # auto (the model's device) | cpu | cuda | cuda:N
    video_threads: int = 2  # FFmpeg / DALI threads per decode (0 would be every core)
    # Qwen-VL resize bounds in pixels per frame (None: the processor's defaults)
    min_pixels: int | None = None
    max_pixels: int | None = None


def _loss_hyperparameters(cls):
    """One field per hyperparameter of the loss registry (``tpo_fast.kernels.LOSSES``: e.g.
    ``label_smoothing``, ``discopop_tau``), with its default and type, added to ``LossConfig``
    before it becomes a dataclass: a new loss hyperparameter needs no edit here."""
    from tpo_fast.kernels.pair_losses import HYPERPARAMETERS

    for name, hp in HYPERPARAMETERS.items():
        if not isinstance(hp.default, (bool, int, float, str, type(None))):
            raise TypeError(f"loss hyperparameter {name}: a config default must be a YAML "
                            f"scalar; got {hp.default!r}")
        cls.__annotations__[name] = hp.annotation
        setattr(cls, name, hp.default)
    return cls


@dataclass
@_loss_hyperparameters
class LossConfig:
    """The ``loss:`` section: ``spec()`` is the ``tpo_fast.kernels.LossSpec`` it describes,
    checked when the section is built (``ConfigError`` naming ``loss.<field>``). Besides the
    fields below, every hyperparameter of ``tpo_fast.kernels.LOSSES`` is a key
    (``loss.label_smoothing``, ``loss.discopop_tau``, ...; its default from the registry)."""

    beta: float = 0.1
    sft_weight: float = 0.0  # α: weight of the chosen responses' token-mean NLL (TPO)
    dpo_weight: float = 1.0  # 0 with sft_weight > 0: plain SFT on the chosen responses
    # one of tpo_fast.kernels.LOSS_TYPES, or a list of them mixed with loss_weights (TRL's)
    loss_type: str | list[str] = "sigmoid"
    loss_weights: list[float] | None = None  # one per listed loss type; default 1 each
    reference: str = "auto"  # precomputed | model | none | auto (precomputed if present)

    def __post_init__(self):
        if self.reference not in ("precomputed", "model", "none", "auto"):
            raise ConfigError(f"loss.reference must be precomputed, model, none or auto, got "
                              f"{self.reference!r}")
        self.spec()

    def spec(self):
        """The ``tpo_fast.kernels.LossSpec`` of this section (ConfigError when invalid)."""
        from tpo_fast.kernels.pair_losses import HYPERPARAMETERS, LossSpec

        try:
            return LossSpec(loss_type=self.loss_type, loss_weights=self.loss_weights,
                            beta=self.beta, sft_weight=self.sft_weight,
                            dpo_weight=self.dpo_weight,
                            **{name: getattr(self, name) for name in HYPERPARAMETERS})
        except ValueError as exc:
            raise ConfigError(f"loss: {exc}") from None


@dataclass
class OptimConfig:
    lr: float = 1e-6
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    epochs: int = 1
    max_steps: int = -1  # optimizer steps; -1: as many as the epochs give
    global_batch_size: int = 64  # pairs per optimizer step, over all ranks
    scheduler: str = "cosine"  # cosine | linear | constant
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 3
    offload_optimizer: bool = False
    offload_params: bool = False
    # Ulysses sequence parallelism: ranks form DP x SP groups; an SP group splits each packed
    # micro-batch along the tokens (tpo_fast/sequence_parallel.py). 1: off
    sequence_parallel_size: int = 1
    # ALST's TiledMLP: the language model's MLPs run over token tiles (activation memory of a
    # tile instead of the shard); 0: off, N: tiles per MLP call
    tiled_mlp: int = 0
    # how long a collective waits for a peer before the job fails (a dead or stuck rank ends
    # the job instead of hanging it); torch's own default is 30 (gloo) / 10 (NCCL)
    timeout_minutes: float = 30.0


@dataclass
class RunConfig:
    output_dir: str = "runs/tpo"
    seed: int = 0
    path: str = "fast"  # fast (packed, prefix-shared, fused loss) | slow (unpacked rows, naive)
    save_every: int = 0  # optimizer steps between checkpoints (0: only at the end)
    keep_checkpoints: int = 2
    resume: str = "auto"  # auto (latest in output_dir) | never | a checkpoint folder
    log_every: int = 1
    tensorboard: bool = True
    plot: bool = True
    progress: bool = True


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> TrainConfig:
        checks = [
            (self.model.path or self.model.tiny, "model.path or model.tiny must be set"),
            (not (self.model.path and self.model.tiny), "set model.path or model.tiny, not both"),
            (self.model.dtype in ("float32", "bfloat16", "float16"),
             f"model.dtype must be float32, bfloat16 or float16, got {self.model.dtype!r}"),
            (self.data.train, "data.train (the pairs file) must be set"),
            (self.data.frames >= 1, "data.frames must be >= 1"),
            (self.data.format in _data_formats(),
             f"data.format must be one of {', '.join(_data_formats())}, got "
             f"{self.data.format!r}"),
            (self.data.frame_fps > 0, "data.frame_fps must be > 0"),
            (self.data.token_budget >= 1, "data.token_budget must be >= 1"),
            (self.data.video_backend in ("auto", "pyav", "dali_cpu", "dali_gpu"),
             f"data.video_backend must be auto, pyav, dali_cpu or dali_gpu, got "
             f"{self.data.video_backend!r}"),
            (self.data.decode_device == "auto" or self.data.decode_device == "cpu"
             or self.data.decode_device.split(":")[0] == "cuda",
             f"data.decode_device must be auto, cpu, cuda or cuda:N, got "
             f"{self.data.decode_device!r}"),
            (self.data.video_threads >= 1, "data.video_threads must be >= 1"),
            (self.optim.lr > 0, "optim.lr must be > 0"),
            (self.optim.epochs >= 1, "optim.epochs must be >= 1"),
            (self.optim.global_batch_size >= 1, "optim.global_batch_size must be >= 1"),
            (self.optim.scheduler in ("cosine", "linear", "constant"),
             "optim.scheduler must be cosine, linear or constant"),
            (0 <= self.optim.warmup_ratio < 1, "optim.warmup_ratio must be in [0, 1)"),
            (len(self.optim.adam_betas) == 2, "optim.adam_betas must hold two numbers"),
            (self.deepspeed.zero_stage in (0, 1, 2, 3), "deepspeed.zero_stage must be 0-3"),
            (self.run.path in ("fast", "slow"), "run.path must be fast or slow"),
            (self.deepspeed.sequence_parallel_size >= 1,
             "deepspeed.sequence_parallel_size must be >= 1"),
            (self.deepspeed.sequence_parallel_size == 1 or self.run.path == "fast",
             "deepspeed.sequence_parallel_size > 1 needs run.path=fast (the slow path runs "
             "unpacked rows on one rank)"),
            (self.deepspeed.tiled_mlp >= 0, "deepspeed.tiled_mlp must be >= 0 (0: off)"),
            (self.deepspeed.timeout_minutes > 0, "deepspeed.timeout_minutes must be > 0"),
            (self.run.save_every >= 0, "run.save_every must be >= 0"),
            (self.run.keep_checkpoints >= 1, "run.keep_checkpoints must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self


def _data_formats() -> tuple[str, ...]:
    from tpo_fast.data.formats import FORMATS

    return ("auto", *FORMATS)


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _coerce(value, tp, key: str):
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 4e-6 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key} must be a float, got {value!r}") from None
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"{key} must be a {tp.__name__}, got {value!r}")
    return value


def _build(cls, values: dict, prefix: str = ""):
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'the config'} must be a mapping, got {values!r}")
    hints = _hints(cls)
    unknown = [k for k in values if k not in hints]
    if unknown:
        key = unknown[0]
        near = difflib.get_close_matches(str(key), list(hints), n=1)
        hint = f"; did you mean {prefix}{near[0]}?" if near else ""
        raise ConfigError(f"unknown config key {prefix}{key}{hint} (valid: "
                          f"{', '.join(prefix + h for h in hints)})")
    kwargs = {}
    for name, value in values.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value or {}, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, prefix + name)
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {part} is not a section")
    node[parts[-1]] = value


def read_config_tree(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
                     ) -> dict:
    """A YAML file's mapping (or an empty one) with ``key=value`` overrides applied; the values
    are YAML scalars. Shared by every typed config of the package."""
    tree = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value")
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
    return tree


def build_config(cls, tree: dict):
    """A dataclass config from a mapping: keys checked (nearest-name hints), values typed."""
    return _build(cls, tree)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML config (or start from defaults) and apply ``key=value`` overrides."""
    return build_config(TrainConfig, read_config_tree(path, overrides)).validate()


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: TrainConfig, path: str | Path, command: str | None = None) -> None:
    """Write the resolved config as YAML (first line: the command, when given)."""
    header = f"# {command}\n" if command else ""
    Path(path).write_text(header + yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
