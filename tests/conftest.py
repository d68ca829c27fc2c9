import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TINY_META = {"trunk": "mobilenet_v3_large", "head": "deeplabv3plus", "num_classes": 5, "output_stride": 16,
             "head_channels": 16, "atrous_rates": [2, 4, 6], "attention_channels": 8, "grouping": "category"}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny_meta():
    return dict(TINY_META)
