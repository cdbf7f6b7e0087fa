"""Dataset sources. Each writes one ``.npz`` (train / held-out split) plus a manifest."""
