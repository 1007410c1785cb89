"""Packing of preference pairs into prefix-shared micro-batches (see DESIGN.md, PackedBatch).

``plan_bins`` assigns pairs to micro-batches and ranks; ``build_indices`` and ``pack_pairs``
build one micro-batch. Both run in the native extension ``tpo_fast._C`` when it is built and
in the numpy oracle (``tpo_fast.packing.naive``) otherwise. A model family's pairs go
through ``tpo_fast.data.PairPacker`` (token ids, video-token checks, the family's position ids),
which calls ``pack_pairs``.
"""

from tpo_fast.packing.backend import get_backend, native_available
from tpo_fast.packing.batch import PackedBatch, PackedIndices, build_indices, pack_pairs
from tpo_fast.packing.planner import DEFAULT_QK_PER_TOKEN, PackingPlan, plan_bins

__all__ = [
    "DEFAULT_QK_PER_TOKEN",
    "PackedBatch",
    "PackedIndices",
    "PackingPlan",
    "build_indices",
    "get_backend",
    "native_available",
    "pack_pairs",
    "plan_bins",
]
