"""Koopman spectral analysis and editing."""
