"""HKD training loop."""
