"""Runtime: devices, mixed precision / channels_last / compile, torchrun + DDP. Imports nothing of hms_core."""
