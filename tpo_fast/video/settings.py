"""``DecodeSettings``: how the data path decodes video, one object for train, ref-logps, curate
and eval, resolved from the one ``decode:`` config section (``tpo_fast.config.DecodeConfig``)
with ``DecodeSettings.from_config``.

* ``backend``: ``auto`` or a ``DECODERS`` entry (``pyav``, ``dali_cpu``, ``dali_gpu``, ...).
  ``auto`` decodes with DALI on the target GPU (NVDEC) when the target is CUDA and DALI
  imports, else with PyAV (on a CPU, PyAV measured about 2x faster than DALI's CPU decoder:
  benchmarks/results/video-*.json).
* ``device``: where frames end up and are preprocessed: ``auto`` (the model's device, so on a
  CUDA machine the rank's own GPU), ``cpu``, ``cuda`` or ``cuda:N``. It is resolved to an
  explicit ``torch.device`` (with its index) in the thread that builds the settings, never in
  a decoding worker thread (where ``torch.cuda.current_device()`` is always 0).
* ``threads``: FFmpeg decoder threads per PyAV decode and DALI CPU threads per pipeline
  (explicit: FFmpeg's own choice is every core, times workers, times ranks).
* ``fallback``: a file a DALI backend cannot read decodes with PyAV instead, counted
  (``decode_counts()["fallback"]``) and logged once per file.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_THREADS = 2


def resolve_device(spec: str | torch.device | None, model_device=None) -> torch.device:
    """An explicit device for ``spec`` ("auto": ``model_device``, else the CPU; "cuda": the
    calling thread's current CUDA device)."""
    if spec is None or spec == "auto":
        return torch.device(model_device) if model_device is not None else torch.device("cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and dev.index is None:
        if not torch.cuda.is_available():
            raise RuntimeError(f"decode device {spec!r} needs CUDA, which is not available")
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


@dataclass(frozen=True)
class DecodeSettings:
    """Resolved decode settings (see the module docstring); ``device`` is explicit."""

    backend: str = "auto"
    device: torch.device = torch.device("cpu")
    threads: int = DEFAULT_THREADS
    fallback: bool = True

    def __post_init__(self):
        from tpo_fast.video.decoders import decoder_names

        if self.backend not in decoder_names():
            raise ValueError(f"unknown video backend {self.backend!r}; choose from "
                             f"{decoder_names()}")
        if self.threads < 1:
            raise ValueError(f"video threads must be >= 1, got {self.threads}")
        object.__setattr__(self, "device", torch.device(self.device))
        if self.device.type == "cuda" and self.device.index is None:
            raise ValueError("DecodeSettings needs an explicit CUDA index; use "
                             "DecodeSettings.build(...)")

    @classmethod
    def build(cls, backend: str = "auto", device: str | torch.device | None = "auto",
              threads: int = DEFAULT_THREADS, *, model_device=None,
              fallback: bool = True) -> DecodeSettings:
        """From config values; ``device="auto"`` follows ``model_device``."""
        return cls(backend, resolve_device(device, model_device), threads, fallback)

    @classmethod
    def from_config(cls, cfg, *, model_device=None) -> DecodeSettings:
        """From a ``decode:`` section (``DecodeConfig``); ``device: auto`` follows
        ``model_device``."""
        return cls.build(cfg.backend, cfg.device, cfg.threads, model_device=model_device,
                         fallback=cfg.fallback)

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"

    def kwargs(self) -> dict:
        """Keyword arguments of ``load_video_inputs`` / ``decode``."""
        return {"backend": self.backend, "device": self.device, "threads": self.threads,
                "fallback": self.fallback}
