"""Evaluation: offline feature extractor, torch-fidelity metrics, sampler throughput."""
