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


TINY_PARAMS = {
    "model": {"head_channels": 8, "attention_channels": 8, "atrous_rates": [2, 4, 6]},
    "data": {"synthetic": {"train": 4, "val": 3, "height": 64, "width": 128}},
    "train": {"steps": 3, "batch_size": 2, "crop": 32, "checkpoint_every": 2, "log_every": 1},
    "finetune": {"steps": 2, "batch_size": 2, "crop": 32, "checkpoint_every": 2, "log_every": 1},
}


def merge(base: dict, update: dict) -> dict:
    """Recursively update ``base`` with ``update``."""
    for k, v in update.items():
        base[k] = merge(base[k], v) if isinstance(v, dict) else v
    return base


def tiny_params(**sections) -> dict:
    """The repository's params.yaml with tiny sizes (and ``sections`` merged on top)."""
    import copy

    import yaml
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    return merge(merge(params, copy.deepcopy(TINY_PARAMS)), sections)
