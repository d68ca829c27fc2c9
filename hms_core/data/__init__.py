"""Data: the Cityscapes layout, label grouping and maps, the embedded synthetic scenes, converters,
the one image resize and the training sample stream. Imports only ``hms_core.io``."""
