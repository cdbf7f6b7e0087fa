"""EDM teacher: training, Heun sampler, trajectory writer."""
