import os
import shutil
import subprocess
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
    # The default three-expert pipeline with frozen experts (the attention-only fine-tuning path);
    # test_pipeline.py runs the default end-to-end fine-tuning and the shared preset as experiments.
    "scales": [0.5, 1.0, 2.0],
    "hms": {"mode": "experts"},
    "model": {"head_channels": 8, "attention_channels": 8, "atrous_rates": [2, 4, 6]},
    "data": {"synthetic": {"train": 4, "val": 3, "height": 64, "width": 128}},
    "train": {"steps": 3, "batch_size": 2, "crop": 32, "checkpoint_every": 2, "log_every": 1},
    "finetune": {"steps": 2, "batch_size": 2, "crop": 32, "checkpoint_every": 2, "log_every": 1, "train_all": False},
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


def run_command(cmd: list[str], cwd: Path) -> str:
    """Run ``cmd`` with this environment's executables first on PATH; fail the test on a non-zero exit."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def copy_pipeline(dst: Path) -> None:
    """The library, the stage scripts and dvc.yaml, as a user's clone has them."""
    for name in ("hms_core", "stages"):
        shutil.copytree(ROOT / name, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
    (dst / "weights").mkdir()
    shutil.copy(ROOT / "weights" / "README.md", dst / "weights")
    shutil.copy(ROOT / "dvc.yaml", dst)


def init_and_repro(dst: Path, params: dict) -> None:
    """Write ``params``, make ``dst`` a git + DVC repository, commit everything and run ``dvc repro``."""
    import yaml

    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    run_command(["git", "init", "-q"], dst)
    run_command(git + ["commit", "-q", "--allow-empty", "-m", "init"], dst)
    run_command(["dvc", "init", "-q"], dst)
    shutil.copy(ROOT / ".dvc" / "config", dst / ".dvc" / "config")  # the default remote, as a clone has it
    run_command(["git", "add", "-A"], dst)
    run_command(git + ["commit", "-q", "-m", "pipeline"], dst)
    run_command(["dvc", "repro"], dst)
