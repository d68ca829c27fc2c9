"""Multi-process training: torchrun + DDP on the CPU (gloo, 2 processes) against one process
with the whole batch, the sharded sample stream, and the stage scripts' torchrun relaunch, on
one node and on two "nodes" (two stage commands meeting at a c10d rendezvous on localhost).

Run as a script (``python -m torch.distributed.run ... tests/test_ddp.py WS OUT``) this file
is the worker of :func:`test_two_processes_match_one_process_with_twice_the_batch`; with
``HMS_TEST_STAGE=stages/x.py`` in the environment it runs that stage script instead, with
samples made independent (see :func:`stage_worker`).
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conftest import tiny_params  # noqa: E402

from hms_core.data.dataset import StreamSampler, prepare_dataset  # noqa: E402
from hms_core.data.labels import build_grouping  # noqa: E402
from hms_core.data.synthetic import generate_dataset  # noqa: E402
from hms_core.io import load_checkpoint, save_checkpoint  # noqa: E402
from hms_core.models.hms import HMS  # noqa: E402
from hms_core.models.segmodel import build_seg_model  # noqa: E402
from hms_core.runtime.distributed import process_group, relaunch_under_torchrun, torchrun_command  # noqa: E402
from hms_core.train.engine import Interrupted, seed_everything  # noqa: E402
from hms_core.train.jobs import finetune_hms, model_meta, train_expert  # noqa: E402

WORLD = 2        # processes
BATCH = 1        # per-process batch of the comparison run
TRAIN_STEPS, FINETUNE_STEPS, STOP_AFTER = 4, 3, 2
TIMEOUT = 180
STAGE_ENV = "HMS_TEST_STAGE"  # stage script that this file, run as a script, runs patched


def _fixed_statistics_batch_norm(self: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


def _no_dropout(self: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    return x


def make_samples_independent(monkeypatch: pytest.MonkeyPatch | None = None) -> None:
    """Make BatchNorm normalise with its running statistics, in training too, and switch dropout off.

    Why: SyncBatchNorm runs on CUDA only, so on the CPU each process normalises
    with the statistics of its own slice of the batch; and dropout (in the ASPP
    projection) draws one mask for the whole batch in one process but one per
    slice in N processes. Either makes N processes differ from one process by
    more than rounding, and weights compared after training would say nothing.
    Without them a sample's forward pass no longer depends on the other samples
    of its batch, and what is left to compare is exactly what DDP must get
    right: the sharded sample stream, the global-batch loss, the averaged
    gradients, the rank-0 checkpoint and the resume.
    """
    patches = ((nn.modules.batchnorm._BatchNorm, _fixed_statistics_batch_norm),
               (nn.Dropout, _no_dropout))
    for cls, forward in patches:
        if monkeypatch is None:
            cls.forward = forward
        else:
            monkeypatch.setattr(cls, "forward", forward)


class Curve:
    """A stand-in for dvclive's ``Live``: records the loss curve."""

    def __init__(self, folder: Path, stop_after: int | None = None) -> None:
        self.dir, self.step, self.loss, self.stop_after = str(folder), 0, {}, stop_after

    def log_metric(self, name: str, value: float) -> None:
        if name != "loss":
            return
        self.loss[self.step] = value
        if self.step == self.stop_after:  # as if SIGTERM reached rank 0 alone, after this step
            self.stop_after = None
            os.kill(os.getpid(), signal.SIGTERM)


def _hms_meta(params: dict) -> dict:
    return {**model_meta(params), "mode": "experts", "scales": params["scales"]}


def _train_and_finetune(params: dict, prepared: Path, out: Path, train_curve: Curve | None,
                        finetune_curve: Curve | None) -> None:
    train_expert(params, 1.0, prepared, out / "expert.pt", out / "expert.ckpt", train_curve)
    torch.manual_seed(1)
    finetune_hms(params, HMS(_hms_meta(params)), prepared, out / "hms.pt", out / "hms.ckpt", finetune_curve)


def worker(ws: Path, out: Path) -> None:
    """One of the torchrun processes: train (stopped on rank 0's signal, then resumed), fine-tune."""
    make_samples_independent()
    params = yaml.safe_load((ws / "ddp.yaml").read_text())
    with process_group(torch.device("cpu")) as ctx:
        main = ctx.is_main
        train_curve = Curve(out / "train_live", stop_after=STOP_AFTER) if main else None
        try:
            train_expert(params, 1.0, ws / "prepared", out / "expert.pt", out / "expert.ckpt", train_curve)
            raise AssertionError(f"rank {ctx.rank}: the stop request on rank 0 did not stop training")
        except Interrupted as exc:
            stopped = str(exc)
        finetune_curve = Curve(out / "finetune_live") if main else None
        _train_and_finetune(params, ws / "prepared", out, train_curve, finetune_curve)
        report = {"rank": ctx.rank, "world_size": ctx.world_size, "stopped": stopped}
        if main:
            report.update(train=train_curve.loss, finetune=finetune_curve.loss)
        (out / f"rank{ctx.rank}.json").write_text(json.dumps(report))


def stage_worker(script: str) -> None:
    """Run the stage script ``script`` as ``__main__`` with samples made independent.

    ``sys.argv[0]`` stays this file (``runpy.run_path`` would set it to ``script``), so the
    stage's torchrun relaunch re-executes this wrapper (environment included) and every
    process of the job runs patched.
    """
    make_samples_independent()
    code = compile(Path(script).read_text(), script, "exec")
    exec(code, {"__name__": "__main__", "__file__": script})


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A tiny prepared dataset (4 training images)."""
    ws = tmp_path_factory.mktemp("ddp")
    generate_dataset(ws / "raw", {"train": 4, "val": 2}, 64, 128, seed=0, progress=False)
    prepare_dataset(ws / "raw", ws / "prepared", build_grouping("category"), ["train"])
    return ws


def _params(ws: Path, batch: int, gpus: int) -> dict:
    # SGD: its update is linear in the gradient, so rounding differences stay rounding-sized
    # (AdamW's g / sqrt(v) turns a rounding-level gradient into a full step of size lr).
    opt = {"optimizer": "sgd", "momentum": 0.9, "batch_size": batch, "checkpoint_every": 2, "log_every": 1}
    params = tiny_params(runtime={"device": "cpu", "workers": 0, "gpus": gpus},
                         train={**opt, "steps": TRAIN_STEPS, "lr": 0.05},
                         finetune={**opt, "steps": FINETUNE_STEPS, "lr": 0.5})
    params["data"]["root"] = str(ws / "raw")
    return params


@dataclass
class Reference:
    """One process with the whole batch (``WORLD * BATCH``): what the multi-process runs must match."""

    params: dict
    out: Path
    train_loss: dict
    finetune_loss: dict


@pytest.fixture(scope="module")
def reference(ws, tmp_path_factory) -> Reference:
    """Train and fine-tune once in this process, shared by the multi-process tests."""
    params = _params(ws, WORLD * BATCH, 1)
    ref = tmp_path_factory.mktemp("ref")
    train_curve, finetune_curve = Curve(ref / "train_live"), Curve(ref / "finetune_live")
    with pytest.MonkeyPatch.context() as monkeypatch:
        make_samples_independent(monkeypatch)
        _train_and_finetune(params, ws / "prepared", ref, train_curve, finetune_curve)
    return Reference(params, ref, train_curve.loss, finetune_curve.loss)


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _run_together(cmd: list[str], copies: int, cwd: Path, env: dict[str, str]) -> list[str]:
    """Run ``copies`` instances of ``cmd`` at once (as ``copies`` nodes would); their stdouts.

    Output goes to files, not pipes: a full pipe would stall one node and, at the
    rendezvous or in an all-reduce, all of them. One node failing would leave the
    others waiting for it, so every instance is killed at the first failure or at
    the timeout.
    """
    logs = [(cwd / f"node{i}.out", cwd / f"node{i}.err") for i in range(copies)]
    procs = []
    for out, err in logs:
        with out.open("w") as stdout, err.open("w") as stderr:
            procs.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdout=stdout, stderr=stderr))
    deadline = time.monotonic() + TIMEOUT
    try:
        while any(p.poll() is None for p in procs) and not any(p.returncode for p in procs):
            assert time.monotonic() < deadline, f"{' '.join(cmd)}: {copies} nodes still running after {TIMEOUT} s"
            time.sleep(0.2)
        for i, (proc, (out, err)) in enumerate(zip(procs, logs)):
            assert proc.returncode == 0, f"node {i}: {' '.join(cmd)} failed ({proc.returncode}):\n" \
                                         f"{out.read_text()[-3000:]}\n{err.read_text()[-3000:]}"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return [out.read_text() for out, _ in logs]


def _free_port() -> int:
    """A TCP port free on localhost now (the rendezvous binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _assert_weights_close(got: dict, want: dict, start: dict, what: str) -> None:
    """``got`` equals ``want`` up to float reordering, while training moved ``want`` far from ``start``."""
    assert got.keys() == want.keys()
    moved = max((want[k].double() - start[k].double()).abs().max().item() for k in want
                if want[k].is_floating_point())
    assert moved > 1e-3, f"{what}: training hardly changed the weights ({moved:.2e}); the check is void"
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=lambda m: f"{what} {k}: {m}")


def _assert_expert_matches(model: Path, reference: Reference) -> None:
    """The expert weights in ``model`` are the single-process reference's."""
    seed_everything(reference.params["seed"])
    start = build_seg_model(model_meta(reference.params)).state_dict()
    _assert_weights_close(load_checkpoint(model)["state_dict"],
                          load_checkpoint(reference.out / "expert.pt")["state_dict"], start, "expert")


def test_two_processes_match_one_process_with_twice_the_batch(ws, reference, tmp_path):
    (ws / "ddp.yaml").write_text(yaml.safe_dump(_params(ws, BATCH, WORLD)))
    out = tmp_path / "ddp"
    out.mkdir()
    _run(torchrun_command(WORLD, [__file__, str(ws), str(out)]), tmp_path)
    params, ref = reference.params, reference.out

    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]
    # Both ranks stopped at the same step although only rank 0 got the signal, and resumed.
    stop = STOP_AFTER + 1
    assert f"at step {stop}" in reports[0]["stopped"] and f"at step {stop}" in reports[1]["stopped"]
    assert "on another rank" in reports[1]["stopped"]
    # The loss curves are those of the global batch (rows of the resumed run replace none).
    for got, want in ((reports[0]["train"], reference.train_loss),
                      (reports[0]["finetune"], reference.finetune_loss)):
        assert [int(s) for s in got] == list(want)
        assert list(got.values()) == pytest.approx(list(want.values()), rel=1e-5)

    _assert_expert_matches(out / "expert.pt", reference)
    torch.manual_seed(1)
    start = HMS(_hms_meta(params)).state_dict()
    _assert_weights_close(load_checkpoint(out / "hms.pt")["state_dict"],
                          load_checkpoint(ref / "hms.pt")["state_dict"], start, "hms")
    assert load_checkpoint(out / "expert.ckpt")["run_id"]["world_size"] == WORLD
    assert "world_size" not in load_checkpoint(ref / "expert.ckpt")["run_id"]


def test_stage_scripts_relaunch_under_torchrun(ws, tmp_path):
    """``runtime.gpus: 2`` makes the stage scripts run themselves in 2 processes; rank 0 alone
    logs and writes (real BatchNorm here, so only the mechanics are checked)."""
    params = _params(ws, 2, WORLD)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    common = ["--params", str(tmp_path / "params.yaml"), "--prepared", str(ws / "prepared")]
    train = _run([sys.executable, str(ROOT / "stages" / "train.py"), *common, "--scale", "1.0",
                  "--out", "expert", "--checkpoint", "expert.ckpt", "--live", "train_live"], tmp_path)
    assert train.stdout.count("train: scale 1.0: 4 steps") == 1, train.stdout
    rows = (tmp_path / "train_live" / "plots" / "metrics" / "loss.tsv").read_text().splitlines()[1:]
    assert [int(r.split("\t")[0]) for r in rows] == list(range(1, TRAIN_STEPS + 1))
    state = load_checkpoint(tmp_path / "expert.ckpt")
    assert state["step"] == TRAIN_STEPS and state["run_id"]["world_size"] == WORLD
    assert all(torch.isfinite(v).all() for v in load_checkpoint(tmp_path / "expert" / "model.pt")
               ["state_dict"].values() if v.is_floating_point())

    torch.manual_seed(0)
    hms = HMS(_hms_meta(params))
    save_checkpoint(tmp_path / "transplanted.pt", {"meta": hms.meta, "state_dict": hms.state_dict()})
    finetune = _run([sys.executable, str(ROOT / "stages" / "finetune.py"), *common,
                     "--model", "transplanted.pt", "--out", "hms.pt", "--checkpoint", "hms.ckpt",
                     "--live", "finetune_live"], tmp_path)
    assert finetune.stdout.count("finetune: pairs") == 1, finetune.stdout
    rows = (tmp_path / "finetune_live" / "plots" / "metrics" / "loss.tsv").read_text().splitlines()[1:]
    assert [int(r.split("\t")[0]) for r in rows] == list(range(1, FINETUNE_STEPS + 1))
    assert load_checkpoint(tmp_path / "hms.pt")["meta"]["pairs"] == [[0.5, 1.0], [1.0, 2.0]]


def test_two_nodes_match_one_process_with_twice_the_batch(ws, reference, tmp_path):
    """``runtime.nodes: 2`` with 1 process each: two copies of the same train stage command (the
    two "nodes", on localhost) meet at a c10d rendezvous and train as one 2-process job."""
    params = _params(ws, BATCH, 1)
    params["runtime"].update(nodes=WORLD, rdzv_endpoint=f"127.0.0.1:{_free_port()}", rdzv_id="test-nodes")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, __file__, "--params", "params.yaml", "--prepared", str(ws / "prepared"),
           "--scale", "1.0", "--out", "expert", "--checkpoint", "expert.ckpt", "--live", "train_live"]
    env = {**os.environ, STAGE_ENV: str(ROOT / "stages" / "train.py")}
    stdouts = _run_together(cmd, WORLD, tmp_path, env)

    # One global rank 0, on one of the nodes, logs and writes (the folder is shared here).
    assert sum(s.count("train: scale 1.0: 4 steps") for s in stdouts) == 1, stdouts
    rows = [r.split("\t") for r in (tmp_path / "train_live" / "plots" / "metrics" / "loss.tsv")
            .read_text().splitlines()[1:]]
    assert [int(r[0]) for r in rows] == list(reference.train_loss)
    assert [float(r[-1]) for r in rows] == pytest.approx(list(reference.train_loss.values()), rel=1e-5)
    _assert_expert_matches(tmp_path / "expert" / "model.pt", reference)
    state = load_checkpoint(tmp_path / "expert.ckpt")
    assert state["step"] == TRAIN_STEPS and state["run_id"]["world_size"] == WORLD


def test_several_nodes_relaunch_with_a_c10d_rendezvous(monkeypatch):
    """``runtime.nodes > 1``: torchrun meets the other nodes at the endpoint instead of ``--standalone``."""
    calls = []
    monkeypatch.setattr(os, "execve", lambda path, argv, env: calls.append(argv))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr("sys.argv", ["stages/train.py", "--scale", "1.0"])
    relaunch_under_torchrun({"gpus": 4, "nodes": 3, "rdzv_endpoint": "node001:29500", "rdzv_id": "job7"},
                            torch.device("cpu"))
    argv, = calls
    assert argv[1:] == ["-m", "torch.distributed.run", "--nnodes=3", "--nproc_per_node=4",
                        "--rdzv_backend=c10d", "--rdzv_endpoint=node001:29500", "--rdzv_id=job7",
                        os.path.abspath("stages/train.py"), "--scale", "1.0"]
    with pytest.raises(ValueError, match="runtime.rdzv_endpoint: host:port where the 2 nodes meet"):
        torchrun_command(1, ["stages/train.py"], nodes=2)


@pytest.mark.parametrize("world, batch, start_step", [(2, 3, 0), (3, 2, 5), (4, 1, 7)])
def test_shards_of_a_step_are_the_single_process_batch(world, batch, start_step):
    n, steps = 5, 11  # more positions than images: the permutation changes with the epoch
    single = list(StreamSampler(n, 0, start_step * world * batch, steps * world * batch))
    shards = [StreamSampler(n, 0, start_step * world * batch, steps * world * batch, rank, world, batch)
              for rank in range(world)]
    per_rank = [list(s) for s in shards]
    assert [len(s) for s in shards] == [len(p) for p in per_rank] == [(steps - start_step) * batch] * world
    for t in range(steps - start_step):
        step = [x for p in per_rank for x in p[t * batch:(t + 1) * batch]]
        assert step == single[t * world * batch:(t + 1) * world * batch]


def test_sampler_rejects_a_rank_outside_the_world():
    with pytest.raises(ValueError, match="rank 2 is not in"):
        StreamSampler(4, 0, 0, 8, rank=2, world_size=2, batch=1)


if __name__ == "__main__":
    if os.environ.get(STAGE_ENV):
        stage_worker(os.environ[STAGE_ENV])
    else:
        worker(Path(sys.argv[1]), Path(sys.argv[2]))
