"""Training: the loop (engine), losses, sample streams, resume fingerprints, and the per-scale,
HMS and explicit jobs. Imports models, data, runtime and io."""
