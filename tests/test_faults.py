"""Faults: resume after SIGKILL, SIGTERM, NaN loss, safe checkpoint loading, reproducibility."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, tiny_params

from hms_core.data.dataset import prepare_dataset, read_index
from hms_core.data.labels import build_grouping
from hms_core.data.synthetic import generate_dataset
from hms_core.io import load_checkpoint, save_checkpoint
from hms_core.train.engine import NonFiniteLoss, fit
from hms_core.train.jobs import train_expert

STEPS = 12


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A tiny prepared dataset and params file for stage subprocesses."""
    ws = tmp_path_factory.mktemp("ws")
    generate_dataset(ws / "raw", {"train": 4, "val": 2}, 64, 128, seed=0, progress=False)
    prepare_dataset(ws / "raw", ws / "prepared", build_grouping("category"), ["train", "val"])
    params = tiny_params(train={"steps": STEPS, "checkpoint_every": 1, "log_every": 1})
    params["data"]["root"] = str(ws / "raw")
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    return ws


def _train_cmd(ws: Path, name: str) -> list[str]:
    return [sys.executable, str(ROOT / "stages" / "train.py"), "--params", str(ws / "params.yaml"),
            "--scale", "1.0", "--prepared", str(ws / "prepared"), "--out", str(ws / name),
            "--checkpoint", str(ws / f"{name}.ckpt"), "--live", str(ws / f"{name}_live")]


def _start(cmd: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(path: Path, proc: subprocess.Popen, min_step: int) -> int:
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if path.is_file():
            try:
                step = load_checkpoint(path)["step"]
            except ValueError:  # caught mid-rename: impossible with atomic writes, so fail loudly below
                raise
            if step >= min_step:
                return step
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint at step >= {min_step}; stage output: {proc.communicate()}")


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


def test_sigkill_then_rerun_matches_uninterrupted_run(workspace):
    ws = workspace
    subprocess.run(_train_cmd(ws, "clean"), cwd=ws, check=True, capture_output=True)
    proc = _start(_train_cmd(ws, "killed"), ws)
    killed_at = _wait_for_checkpoint(ws / "killed.ckpt", proc, 3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed_at < STEPS and not (ws / "killed" / "model.pt").exists()
    rerun = subprocess.run(_train_cmd(ws, "killed"), cwd=ws, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming from" in rerun.stderr
    clean, resumed = _weights(ws / "clean" / "model.pt"), _weights(ws / "killed" / "model.pt")
    assert all(torch.equal(clean[k], resumed[k]) for k in clean)
    # dvclive curves are whole: one row per step, no duplicates from the replayed steps.
    rows = (ws / "killed_live" / "plots" / "metrics" / "loss.tsv").read_text().splitlines()[1:]
    assert [int(r.split("\t")[0]) for r in rows] == list(range(1, STEPS + 1))
    assert rows == (ws / "clean_live" / "plots" / "metrics" / "loss.tsv").read_text().splitlines()[1:]


def test_sigterm_writes_checkpoint_and_exits(workspace):
    ws = workspace
    proc = _start(_train_cmd(ws, "term"), ws)
    _wait_for_checkpoint(ws / "term.ckpt", proc, 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("training finished before the signal arrived")
    assert proc.returncode == 130
    step = load_checkpoint(ws / "term.ckpt")["step"]
    assert f"checkpoint {ws / 'term.ckpt'} written" in err and f"at step {step}" in err
    assert not (ws / "term" / "model.pt").exists()


def test_nan_loss_stops_keeps_last_checkpoint_and_names_step(tmp_path):
    model = torch.nn.Linear(2, 1)
    cfg = {"steps": 6, "optimizer": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0,
           "poly_power": 1.0, "checkpoint_every": 2, "log_every": 1}
    batches = lambda start: (torch.ones(4, 2) * (float("nan") if i == 3 else 1.0) for i in range(start, 6))
    with pytest.raises(NonFiniteLoss, match="loss is nan at step 3"):
        fit(model, lambda x: model(x).mean(), batches, cfg, tmp_path / "ck.pt", {"id": 1})
    state = load_checkpoint(tmp_path / "ck.pt")
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_loss_is_read_on_the_host_only_at_log_and_save_steps(tmp_path, monkeypatch):
    """One host sync per ``log_every`` steps (and per checkpoint), not one per step; a NaN between
    two reads is still named by its step and no checkpoint is written after it."""
    model = torch.nn.Linear(2, 1)
    cfg = {"steps": 12, "optimizer": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0,
           "poly_power": 1.0, "checkpoint_every": 6, "log_every": 4}
    reads = []
    real_cpu = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: reads.append(1) or real_cpu(self, *a, **k))
    monkeypatch.setattr(torch.Tensor, "item", lambda self: pytest.fail("a per-step .item()"))
    batches = lambda start: (torch.ones(4, 2) for _ in range(start, 12))
    fit(model, lambda x: model(x).mean(), batches, cfg, tmp_path / "ok.pt", {"id": 1})
    assert len(reads) == 4  # after steps 4, 6, 8 and 12 (logging and saving at 12 share one read)
    monkeypatch.undo()
    nan_at = 9
    batches = lambda start: (torch.ones(4, 2) * (float("nan") if i == nan_at else 1.0) for i in range(start, 12))
    with pytest.raises(NonFiniteLoss, match=f"loss is nan at step {nan_at}"):
        fit(torch.nn.Linear(2, 1), lambda x: model(x).mean(), batches, cfg, tmp_path / "nan.pt", {"id": 2})
    assert load_checkpoint(tmp_path / "nan.pt")["step"] == 6


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/hms_pwned",))


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"meta": _Payload()}, path)
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(path)
    assert not Path("/tmp/hms_pwned").exists()


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"w": torch.zeros(1000)})
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match=f"{path}: not a readable checkpoint"):
        load_checkpoint(path)


def test_same_seed_same_weights_and_metrics(workspace, tmp_path):
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["train"]["steps"] = 4
    runs = []
    for i in range(2):
        out = tmp_path / f"run{i}" / "model.pt"
        summary = train_expert(params, 1.0, workspace / "prepared", out, tmp_path / f"run{i}.ckpt")
        runs.append((summary["final_loss"], _weights(out)))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])


def test_checkpoint_of_other_data_is_not_resumed(workspace, tmp_path, capsys):
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["train"]["steps"] = 2
    ckpt = tmp_path / "run.ckpt"
    train_expert(params, 1.0, workspace / "prepared", tmp_path / "a" / "model.pt", ckpt)
    train_expert(params, 1.0, workspace / "prepared", tmp_path / "b" / "model.pt", ckpt)
    assert "resuming from" in capsys.readouterr().err  # same inputs: the finished run is reused
    image = Path(read_index(workspace / "prepared", "train")[0]["image"])
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))  # the data changed
    train_expert(params, 1.0, workspace / "prepared", tmp_path / "c" / "model.pt", ckpt)
    assert "starting afresh" in capsys.readouterr().err
