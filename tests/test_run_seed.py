"""bench/run_seed.py: what an ablation run without the baselines or with warm-started experts runs, and the
stage times it keeps."""
import shlex
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from run_seed import evaluate_without_baselines, stage_times, warm_expert_command  # noqa: E402


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


def test_a_warm_expert_runs_its_train_stage_command_from_the_scale_1_expert():
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]["do"]["cmd"]
    cmd = warm_expert_command(ROOT / "dvc.yaml", 2.0, 1.0)
    assert cmd[0] == sys.executable
    assert cmd[1:-2] == shlex.split(stage.replace("${item}", "2.0"))[1:]   # the stage's own outputs
    assert cmd[-2:] == ["--init", "models/experts/scale_1.0/model.pt"]
