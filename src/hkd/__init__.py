"""hkd-repro: a reproduction of Hierarchical Koopman Diffusion (Bai, Ding, Zou, NeurIPS 2025)."""

__version__ = "0.1.0"
