"""EDM-compatible networks."""
