"""Fast decoding of 8-bit RGB PNGs (Cityscapes ``leftImg8bit``) with libpng through torchvision.

On a 1024x2048 street scene ``torchvision.io.decode_png`` on the file's bytes
takes about 11 % less time than PIL (``bench/png_decode.py``) and returns the
same pixels, even in the same memory layout (``[3, H, W]`` over ``H x W x 3``
storage), so everything computed from it is bit-identical. Other files
(palette, grey, 16-bit, alpha, not a PNG, corrupt) are left to PIL, whose
conversions and error messages the pipeline already relies on.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RGB_COLOUR_TYPE = 2

try:  # the image extension of torchvision is optional in some builds
    from torchvision.io import ImageReadMode, decode_png
except ImportError:  # pragma: no cover
    decode_png = None


def is_rgb8_png(header: bytes) -> bool:
    """True for a PNG whose IHDR says 8 bits per sample, colour type 2 (RGB, no alpha).

    Layout: 8-byte signature, chunk length (4), ``IHDR`` (4), width (4),
    height (4), bit depth (byte 24), colour type (byte 25).
    """
    return (len(header) >= 26 and header[:8] == PNG_SIGNATURE and header[12:16] == b"IHDR"
            and header[24] == 8 and header[25] == RGB_COLOUR_TYPE)


def decode_rgb8(path: Path) -> torch.Tensor | None:
    """``[3, H, W]`` uint8 pixels of an 8-bit RGB PNG; ``None`` when PIL should read the file."""
    if decode_png is None:
        return None
    try:
        data = path.read_bytes()
        if not is_rgb8_png(data):
            return None
        with warnings.catch_warnings():
            # torchvision >= 0.29 marks its decoders deprecated (in favour of torchcodec) on every call.
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except (OSError, RuntimeError, ValueError):  # missing or corrupt: PIL reports it in the pipeline's words
        return None
