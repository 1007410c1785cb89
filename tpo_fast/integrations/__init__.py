"""Drop-ins for other trainers (optional extras; nothing here is imported by ``import tpo_fast``).

* ``tpo_fast.integrations.trl``: ``TPODPOTrainer``, TRL's ``DPOTrainer`` with the packed,
  prefix-shared forward and the fused loss (``pip install tpo_fast[trl]``).
"""
