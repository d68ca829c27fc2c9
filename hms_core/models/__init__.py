"""Models: trunks, heads, the per-scale branch, the N-scale forward, HMS, explicit attention, the
transplant. Imports ``hms_core.data`` and ``hms_core.io``."""
