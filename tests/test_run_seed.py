"""bench/run_seed.py: what an ablation run without the baselines runs, and the stage times it keeps."""
import shlex
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from run_seed import evaluate_without_baselines, stage_times  # noqa: E402


def test_evaluate_without_baselines_is_the_stage_command_less_the_two_models():
    stage = shlex.split(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["evaluate"]["cmd"])
    cmd = evaluate_without_baselines(ROOT / "dvc.yaml")
    assert cmd[0] == sys.executable and cmd[1] == "stages/evaluate.py"
    assert "--explicit" not in cmd and "--control" not in cmd
    assert not any(w.endswith(("explicit/model.pt", "control/model.pt")) for w in cmd)
    # every other option of the stage, with its value, in the stage's order
    kept = [w for w in stage[1:] if w in cmd]
    assert kept == cmd[1:] and {"--model", "--out", "--predictions"} <= set(cmd)


def test_stage_times_belong_to_the_stage_announced_last():
    log = ("Running stage 'train@0.5':\ntrain: done in 12.5 s\nRunning stage 'finetune':\nnoise\n"
           "finetune: done in 3 s\n")
    assert stage_times(log) == {"train@0.5": 12.5, "finetune": 3.0}
