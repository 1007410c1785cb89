"""The one error every decoder raises for a video it cannot read."""

from __future__ import annotations

import os


class VideoDecodeError(RuntimeError):
    """A video that cannot be probed or decoded: missing, corrupt, unsupported, or a requested
    frame that does not decode. ``path`` names the file, ``reason`` says why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep both fields when the error crosses a process boundary
        return (type(self), (self.path, self.reason))
