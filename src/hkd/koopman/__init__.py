"""Hierarchical Koopman operators and the HKD encoder / evolution / decoder model."""
