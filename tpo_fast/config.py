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
from typing import ClassVar, Literal

import yaml


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key."""


Dtype = Literal["float32", "bfloat16", "float16"]


def require(ok, message: str) -> None:
    """Raise ``ConfigError(message)`` unless ``ok`` (a section's ``check`` is made of these)."""
    if not ok:
        raise ConfigError(message)


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
    dtype: Dtype = "bfloat16"
    attention_backend: str = "auto"
    train_vision_tower: bool = False
    train_projector: bool = True
    gradient_checkpointing: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)

    def check(self, key: str) -> None:
        require(self.path or self.tiny, f"{key}.path or {key}.tiny must be set")
        require(not (self.path and self.tiny), f"set {key}.path or {key}.tiny, not both")


@dataclass
class DecodeConfig:
    """The ``decode:`` section of train (and ref-logps), curate and eval: how videos decode
    (``tpo_fast.video.DecodeSettings``, ``tpo_fast.video.DECODERS``)."""

    # auto (CUDA target: DALI on that GPU, else PyAV) | a DECODERS name: pyav | dali_cpu |
    # dali_gpu | ... (tpo_fast.video.decoder_names())
    backend: str = "auto"
    device: str = "auto"  # auto (the model's device) | cpu | cuda | cuda:N
    threads: int = 2  # decoder threads per video (FFmpeg / DALI; 0 would be every core)
    workers: int = 2  # background decoding threads (0: decode in the calling thread)
    fallback: bool = True  # a file the backend cannot read decodes with PyAV (counted, logged)

    # the keys this section replaces, wherever they were (train, curate, eval)
    REPLACES: ClassVar[dict[str, str]] = {
        "video_backend": "backend", "decode_device": "device", "video_threads": "threads",
        "decode_threads": "workers", "decode_workers": "workers"}

    def check(self, key: str) -> None:
        from tpo_fast.video.decoders import decoder_names

        names = decoder_names()
        require(self.backend in names,
                f"{key}.backend must be one of {', '.join(names)}, got {self.backend!r}")
        head, _, index = self.device.partition(":")
        require(self.device in ("auto", "cpu", "cuda")
                or (head == "cuda" and index.isdigit()),
                f"{key}.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        require(self.threads >= 1, f"{key}.threads must be >= 1")
        require(self.workers >= 0, f"{key}.workers must be >= 0")


# {old key: its decode.* key}, for the sections that held the decode settings
MOVED_TO_DECODE = {old: f"decode.{new}" for old, new in DecodeConfig.REPLACES.items()}


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
    # Qwen-VL resize bounds in pixels per frame (None: the processor's defaults)
    min_pixels: int | None = None
    max_pixels: int | None = None

    MOVED: ClassVar[dict[str, str]] = MOVED_TO_DECODE

    def check(self, key: str) -> None:
        formats = _data_formats()
        require(self.train, f"{key}.train (the pairs file) must be set")
        require(self.frames >= 1, f"{key}.frames must be >= 1")
        require(self.format in formats, f"{key}.format must be one of {', '.join(formats)}, "
                                          f"got {self.format!r}")
        require(self.frame_fps > 0, f"{key}.frame_fps must be > 0")
        require(self.token_budget >= 1, f"{key}.token_budget must be >= 1")


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
    # auto: precomputed when every pair has ref_logps, else a live model
    reference: Literal["auto", "precomputed", "model", "none"] = "auto"

    def check(self, key: str) -> None:
        self.spec()  # the LossSpec checks: ConfigError naming loss.<field>

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
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0

    def check(self, key: str) -> None:
        require(self.lr > 0, f"{key}.lr must be > 0")
        require(self.epochs >= 1, f"{key}.epochs must be >= 1")
        require(self.global_batch_size >= 1, f"{key}.global_batch_size must be >= 1")
        require(0 <= self.warmup_ratio < 1, f"{key}.warmup_ratio must be in [0, 1)")
        require(len(self.adam_betas) == 2, f"{key}.adam_betas must hold two numbers")


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 3  # 0-3
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

    def check(self, key: str) -> None:
        require(self.zero_stage in (0, 1, 2, 3), f"{key}.zero_stage must be 0-3")
        require(self.sequence_parallel_size >= 1, f"{key}.sequence_parallel_size must be >= 1")
        require(self.tiled_mlp >= 0, f"{key}.tiled_mlp must be >= 0 (0: off)")
        require(self.timeout_minutes > 0, f"{key}.timeout_minutes must be > 0")


@dataclass
class RunConfig:
    output_dir: str = "runs/tpo"
    seed: int = 0
    path: Literal["fast", "slow"] = "fast"  # fast (packed, prefix-shared, fused) | slow (naive)
    save_every: int = 0  # optimizer steps between checkpoints (0: only at the end)
    keep_checkpoints: int = 2
    resume: str = "auto"  # auto (latest in output_dir) | never | a checkpoint folder
    log_every: int = 1
    tensorboard: bool = True
    plot: bool = True
    progress: bool = True

    def check(self, key: str) -> None:
        require(self.save_every >= 0, f"{key}.save_every must be >= 0")
        require(self.keep_checkpoints >= 1, f"{key}.keep_checkpoints must be >= 1")


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    # train's data loader decodes with 4 background threads (curate and eval: 2)
    decode: DecodeConfig = field(default_factory=lambda: DecodeConfig(workers=4))
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def check(self, key: str) -> None:
        """The checks that span sections (each section checks its own fields)."""
        require(self.deepspeed.sequence_parallel_size == 1 or self.run.path == "fast",
                 "deepspeed.sequence_parallel_size > 1 needs run.path=fast (the slow path runs "
                 "unpacked rows on one rank)")

    def validate(self) -> TrainConfig:
        """Raise ConfigError naming the first bad key."""
        check_sections(self)
        return self


def check_sections(cfg, key: str = "") -> None:
    """Validate a config tree beside its fields: every field's value against its annotation
    (a ``Literal`` names its allowed values), nested sections first, then each section's own
    ``check(key)``. Raises ``ConfigError`` naming the first bad key."""
    hints = _hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, name = getattr(cfg, f.name), f"{key}{f.name}"
        if dataclasses.is_dataclass(value):
            check_sections(value, name + ".")
        else:
            _coerce(value, hints[f.name], name)
    if hasattr(cfg, "check"):
        cfg.check(key.rstrip("."))


def _data_formats() -> tuple[str, ...]:
    from tpo_fast.data.formats import FORMATS

    return ("auto", *FORMATS)


def _hints(cls) -> dict:
    """The config fields' annotations (class-level constants left out)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value, tp, key: str):
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats; a
    ``Literal`` accepts its values only (the error names them)."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if not any(value == a and type(value) is type(a) for a in allowed):
            raise ConfigError(f"{key} must be one of {', '.join(map(str, allowed))}, got "
                              f"{value!r}")
        return value
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
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ConfigError(f"{key} must be a string, got the number {value!r} (quote it for "
                          f"YAML: {key}: '{value}'; on a command line {key}=\"'{value}'\")")
    if not isinstance(value, tp):
        raise ConfigError(f"{key} must be a {tp.__name__}, got {value!r}")
    return value


def _build(cls, values: dict, prefix: str = "", base=None):
    """``cls`` from ``values`` (a section starts from ``base``, its default where it sits,
    when given). A key a section lists in ``MOVED`` (old name -> new key) is an error naming
    the new key."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'the config'} must be a mapping, got {values!r}")
    hints = _hints(cls)
    unknown = [k for k in values if k not in hints]
    if unknown:
        key = unknown[0]
        moved = getattr(cls, "MOVED", {})
        if key in moved:
            raise ConfigError(f"config key {prefix}{key} is now {moved[key]}; rename it")
        near = difflib.get_close_matches(str(key), list(hints), n=1)
        hint = f"; did you mean {prefix}{near[0]}?" if near else ""
        raise ConfigError(f"unknown config key {prefix}{key}{hint} (valid: "
                          f"{', '.join(prefix + h for h in hints)})")
    kwargs = {}
    for name, value in values.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value or {}, f"{prefix}{name}.", _default(cls, name))
        else:
            kwargs[name] = _coerce(value, tp, prefix + name)
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


def _default(cls, name: str):
    """The default value of field ``name`` of ``cls`` (None when it has none)."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def set_dotted(tree: dict, dotted: str, value) -> None:
    """Set ``tree[a][b]... = value`` for the key ``"a.b..."`` (sections made as needed)."""
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
        set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
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
