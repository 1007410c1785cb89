"""Pair files, readers of public formats, the training set and the family's ``PairPacker``."""


def __getattr__(name: str):
    # lazy: ``import tpo_fast.data.pairs`` (curation, the CLI) need not import the packer
    if name == "PairPacker":
        from tpo_fast.data.packer import PairPacker

        return PairPacker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["PairPacker"]
