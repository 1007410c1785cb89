"""tpo_fast.kernels: Triton kernels with their launchers, autograd Functions and plain-torch
references. Self-contained: depends on torch and triton only (installed from the top-level
``kernels/`` folder as ``tpo_fast.kernels``).

Nothing is exported yet; the fused LM head + log-prob gather + DPO/SFT loss lands here.
"""
