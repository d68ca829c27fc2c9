"""Every stage's DVC ``params:`` cover the params.yaml keys its script reads, so that a changed key can
never leave ``dvc status`` saying "up to date" over a stale output.

The keys are those a tiny pipeline's runs read (``dvc repro`` with ``HMS_PARAMS_READ`` set: each stage
run records them, :class:`hms_core.config.Tracked`), in the default experts mode and in shared mode;
the validation of the whole file before a stage's work does not count.
"""
from __future__ import annotations

import copy
import json
import pickle
import shlex
from collections import defaultdict
from pathlib import Path

import pytest
import torch
import yaml
from conftest import copy_pipeline, init_and_repro, run_command, tiny_params

from hms_core.config import Tracked
from hms_core.io import load_checkpoint
from hms_core.tools.stage import PARAMS_READ_ENV

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
# Read but deliberately not params of the training stages: they change speed or plumbing, not what
# a stage computes (docs/reference.md: "Experts retrain only when what they learn from changes").
EXECUTION_ONLY = {f"runtime.{k}" for k in ("device", "workers", "deterministic", "channels_last", "compile",
                                           "rdzv_endpoint", "rdzv_id")}
# Read only by a check that fails the stage, never changing its outputs: train@<s> checks that <s> is
# one of scales (which also picks the train@<s> stages that exist); adding a scale retrains no expert.
GUARDS = {"train": {"scales"}}
SHARED = {"hms": {"mode": "shared"}, "scales": [1.0], "finetune": {"train_all": True}}  # presets/shared.yaml


def stage_commands(stages: dict, scales: list[float]) -> dict[tuple[str, ...], str]:
    """``{argv of the stage's script: stage name in dvc.yaml}``; a ``foreach`` stage has one per scale."""
    out = {}
    for name, stage in stages.items():
        if "foreach" in stage:
            assert stage["foreach"] == "${scales}", name
            cmds = [stage["do"]["cmd"].replace("${item}", str(s)) for s in scales]
        else:
            cmds = [stage["cmd"]]
        for cmd in cmds:
            assert "${" not in cmd, cmd
            out[tuple(shlex.split(cmd)[1:])] = name  # without "python": sys.argv
    return out


def stage_params(stage: dict) -> list[str]:
    """The params.yaml keys the stage lists (entries of other params files left out)."""
    out = []
    for p in (stage["do"] if "do" in stage else stage).get("params", []):
        out += [p] if isinstance(p, str) else p.get("params.yaml", [])
    return out


def reads_by_stage(stages: dict, records: list[dict], scales: list[float]) -> dict[str, set[str]]:
    commands = stage_commands(stages, scales)
    reads: dict[str, set[str]] = defaultdict(set)
    for r in records:
        argv = tuple(r["argv"])
        assert argv in commands, f"a stage run that no dvc.yaml cmd names: {argv}"
        reads[commands[argv]] |= set(r["keys"])
    return reads


def unlisted(stages: dict, records: list[dict], scales: list[float]) -> dict[str, list[str]]:
    """``{stage: [keys its runs read that none of its params covers]}`` for every stage with any; a
    listed key covers itself and every key under it (``train`` covers ``train.steps``)."""
    out = {}
    for name, keys in reads_by_stage(stages, records, scales).items():
        listed = stage_params(stages[name])
        missing = sorted(k for k in keys - EXECUTION_ONLY - GUARDS.get(name, set())
                         if not any(k == p or k.startswith(p + ".") for p in listed))
        if missing:
            out[name] = missing
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, list[dict], list[float]]:
    """A tiny pipeline reproduced with its reads recorded, then every stage again in shared mode."""
    dst = tmp_path_factory.mktemp("repo_params")
    log = dst.parent / "params_read.jsonl"  # outside the repository
    copy_pipeline(dst)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PARAMS_READ_ENV, str(log))
        params = tiny_params()
        init_and_repro(dst, params)
        shared = tiny_params(**copy.deepcopy(SHARED))
        (dst / "params.yaml").write_text(yaml.safe_dump(shared, sort_keys=False))
        run_command(["dvc", "repro", "--force"], dst)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    return dst, records, sorted(set(params["scales"]) | set(shared["scales"]))


def test_every_stage_lists_every_params_key_it_reads(runs):
    _, records, scales = runs
    assert set(reads_by_stage(STAGES, records, scales)) == set(STAGES)  # every stage ran and recorded
    assert unlisted(STAGES, records, scales) == {}


def test_the_runs_read_what_the_modes_read(runs):
    _, records, scales = runs
    reads = reads_by_stage(STAGES, records, scales)
    assert {"model.attention_channels", "train.steps", "runtime.amp", "runtime.device"} <= reads["train"]
    # Shared mode only: the model is built for every scale of the chains, trained on the listed pairs.
    assert {"evaluate.hms_scales", "hms.shared_source_scale"} <= reads["transplant"]
    assert {"hms.shared_pairs", "finetune.aux_weight"} <= reads["finetune"]
    assert "evaluate" not in reads["train"] and "data.synthetic.train" not in reads["train"]


@pytest.mark.parametrize("stage, key", [("train", "model.head_channels"), ("train", "train"),
                                        ("train_control", "finetune.steps"), ("generate", "data.synthetic"),
                                        ("transplant", "evaluate.hms_scales"), ("finetune", "hms"),
                                        ("evaluate", "evaluate"), ("official_check", "data.label_map")])
def test_the_check_fails_when_one_params_key_is_dropped(runs, stage, key):
    _, records, scales = runs
    mutated = copy.deepcopy(STAGES)
    (mutated[stage]["do"] if "do" in mutated[stage] else mutated[stage])["params"].remove(key)
    missing = unlisted(mutated, records, scales)
    assert list(missing) == [stage] and all(k == key or k.startswith(key + ".") for k in missing[stage])


def test_what_a_tracked_run_saves_loads_as_plain_data(runs):
    repo, _, _ = runs
    saved = sorted((repo / "models").rglob("*.pt")) + sorted((repo / "checkpoints").rglob("*.pt"))
    assert len(saved) >= 8
    for path in saved:
        load_checkpoint(path)  # weights_only: a Tracked object in it would be refused


RAW = {"a": 1, "b": {"c": [1, 2], "d": {"e": 3}}, "f": {"g": 1, "h": 2}, "x": {"y": 0}}


def test_tracked_records_the_dotted_keys_read():
    t = Tracked(copy.deepcopy(RAW))
    assert t["a"] == 1 and t["b"]["d"].get("e") == 3 and "z" not in t["x"] and t.get("missing") is None
    assert t.read == {"a", "b.d.e", "x.z", "missing"}  # reaching b, b.d and x reads nothing by itself
    assert t["b"] is t["b"] and isinstance(t["b"], Tracked)
    assert dict(t["f"].items()) == {"g": 1, "h": 2} and json.dumps(t["x"]) == '{"y": 0}'
    assert t.read == {"a", "b.d.e", "x.z", "missing", "f", "x"}  # whole mappings: their paths
    copy.deepcopy(t["b"]["d"])
    assert "b.d" in t.read and "b" not in t.read
    list(t)
    assert set(RAW) <= t.read  # the whole file: every top-level key


def test_tracked_behaves_like_the_dict(tmp_path):
    t = Tracked(copy.deepcopy(RAW))
    t["b"]["d"]  # a wrapped child
    assert isinstance(t, dict) and t == RAW and {**t} == RAW and dict(t) == RAW and repr(t) == repr(RAW)
    assert json.loads(json.dumps(t, indent=2)) == RAW and yaml.safe_load(yaml.safe_dump(t)) == RAW
    assert yaml.safe_load(yaml.dump(t)) == RAW
    for clone in (copy.deepcopy(t), copy.copy(t), t.copy(), pickle.loads(pickle.dumps(t)), t | {}, {} | t):
        assert clone == RAW and type(clone) is dict and type(clone["b"]) is dict
    torch.save({"run_id": dict(t["f"])}, tmp_path / "ck.pt")
    assert load_checkpoint(tmp_path / "ck.pt") == {"run_id": RAW["f"]}
    torch.save({"run_id": t["f"]}, tmp_path / "tracked.pt")  # why a stage saves dict() of it
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "tracked.pt")
