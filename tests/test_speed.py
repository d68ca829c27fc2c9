"""Speed options (``runtime.amp``, ``channels_last``, ``compile``, ``gpus``): CPU results unchanged,
clear errors for bad values."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_params

from hms_core.config import ParamsError, validate
from hms_core.data.dataset import prepare_dataset
from hms_core.data.labels import build_grouping
from hms_core.data.synthetic import generate_dataset
from hms_core.io import load_checkpoint
from hms_core.models.hms import HMS
from hms_core.models.segmodel import build_seg_model
from hms_core.runtime import distributed
from hms_core.runtime.distributed import check_devices, relaunch_under_torchrun
from hms_core.runtime.speed import Speed, configure_backends, cpu_state_dict
from hms_core.train.jobs import finetune_hms, model_meta, train_expert

OFF = {"amp": "none", "channels_last": False, "compile": False}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("speed")
    generate_dataset(ws / "raw", {"train": 4, "val": 2}, 64, 128, seed=0, progress=False)
    prepare_dataset(ws / "raw", ws / "prepared", build_grouping("category"), ["train"])
    return ws / "prepared"


def _train_and_finetune(prepared: Path, out: Path, runtime: dict) -> tuple[list[float], list[dict]]:
    params = tiny_params(runtime={"device": "cpu", **runtime})
    losses = [train_expert(params, 1.0, prepared, out / "expert.pt", out / "expert.ckpt")["final_loss"]]
    torch.manual_seed(0)
    hms = HMS({**model_meta(params), "mode": "experts", "scales": params["scales"]})
    losses.append(finetune_hms(params, hms, prepared, out / "hms.pt", out / "hms.ckpt")["final_loss"])
    return losses, [load_checkpoint(out / f)["state_dict"] for f in ("expert.pt", "hms.pt")]


def test_mixed_precision_path_trains_in_bfloat16_and_saves_float32(prepared, tmp_path, monkeypatch):
    """The path a GPU takes with ``amp: bf16`` and ``channels_last``, forced onto the CPU (where
    ``from_runtime`` would drop both): convolutions run in bfloat16, the loss stays close to
    the float32 run's without being equal to it, and the saved weights are float32 in the
    default layout."""
    want_losses, want = _train_and_finetune(prepared, tmp_path / "off", OFF)
    forced = Speed(torch.device("cpu"), amp="bf16", channels_last=True)
    monkeypatch.setattr(Speed, "from_runtime", classmethod(lambda cls, runtime, device: forced))
    dtypes = set()
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda m, i, o: dtypes.add(o.dtype) if isinstance(m, torch.nn.Conv2d) else None)
    try:
        got_losses, got = _train_and_finetune(prepared, tmp_path / "on", OFF)
    finally:
        hook.remove()
    assert torch.bfloat16 in dtypes
    assert got_losses != want_losses and got_losses == pytest.approx(want_losses, rel=0.05)
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        assert all(g[k].dtype == w[k].dtype and g[k].is_contiguous() for k in w)
        assert all(torch.isfinite(g[k].float()).all() for k in w)


def test_speed_settings_act_on_cuda_only():
    runtime = {"amp": "bf16", "channels_last": True, "compile": False}
    cpu = Speed.from_runtime(runtime, torch.device("cpu"))
    assert (cpu.amp, cpu.channels_last, cpu.grad_scaler()) == ("none", False, None)
    with cpu.autocast():
        assert not torch.is_autocast_enabled()
    cuda = Speed.from_runtime({**runtime, "amp": "fp16"}, torch.device("cuda", 0))
    assert (cuda.amp, cuda.channels_last, cuda.compile) == ("fp16", True, False)
    x = torch.zeros(2, 3, 4, 4)
    assert cpu.to_device(x).is_contiguous()


def test_cpu_leaves_cudnn_autotuning_alone(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    configure_backends(torch.device("cpu"), deterministic=False)
    assert torch.backends.cudnn.benchmark is False


def test_deterministic_cuda_fixes_the_cublas_workspace(monkeypatch):
    """``deterministic: true`` on CUDA: ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` unless the environment
    sets it, deterministic algorithms with warn_only (some CUDA backward kernels have none),
    no cuDNN autotuning. On the CPU no environment change; not deterministic: autotuning."""
    calls = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms",
                        lambda mode, warn_only=False: calls.append((mode, warn_only)))
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    configure_backends(torch.device("cpu"), deterministic=True)
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ and torch.backends.cudnn.benchmark is True
    configure_backends(torch.device("cuda"), deterministic=True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and torch.backends.cudnn.benchmark is False
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    configure_backends(torch.device("cuda", 0), deterministic=True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    assert calls == [(True, True)] * 3
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    configure_backends(torch.device("cuda"), deterministic=False)
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ and torch.backends.cudnn.benchmark is True
    assert len(calls) == 3


def test_saved_weights_are_in_the_default_layout(tiny_meta):
    model = build_seg_model(tiny_meta)
    want = {k: v.clone() for k, v in model.state_dict().items()}
    model.to(memory_format=torch.channels_last)
    state = cpu_state_dict(model)
    assert all(v.is_contiguous() and torch.equal(v, want[k]) for k, v in state.items())
    assert hasattr(state, "_metadata")  # the state dict object itself, as model.state_dict() saves it


@pytest.mark.parametrize("key, value, message", [
    ("amp", "fp32", "'runtime.amp' must be one of bf16, fp16, none, got 'fp32'"),
    ("channels_last", "yes", "'runtime.channels_last' must be true or false, got 'yes'"),
    ("compile", 1, "'runtime.compile' must be true or false, got 1"),
    ("gpus", 0, "'runtime.gpus' must be an integer >= 1, got 0"),
    ("gpus", 2.0, "'runtime.gpus' must be an integer >= 1, got 2.0"),
])
def test_bad_runtime_values_name_the_key(key, value, message):
    params = tiny_params()
    params["runtime"][key] = value
    with pytest.raises(ParamsError, match=message.replace("(", r"\(")):
        validate(params)


def test_missing_runtime_key_is_named():
    params = tiny_params()
    del params["runtime"]["gpus"]
    with pytest.raises(ParamsError, match="missing key 'runtime.gpus'"):
        validate(params)


def test_gpus_that_cannot_be_honoured_are_refused():
    with pytest.raises(ValueError, match=r"runtime.device: 'cuda:1' names one GPU, but runtime.gpus is 2"):
        check_devices(torch.device("cuda", 1), 2)
    with pytest.raises(ValueError, match=r"runtime.gpus: 4096 processes asked for, but \d+ CUDA devices"):
        check_devices(torch.device("cuda"), 4096)
    check_devices(torch.device("cpu"), 2)  # N gloo processes on the CPU


def test_relaunch_execs_torchrun_once(monkeypatch):
    calls = []
    monkeypatch.setattr(os, "execve", lambda path, argv, env: calls.append((argv, env)))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr("sys.argv", ["stages/train.py", "--scale", "1.0"])
    relaunch_under_torchrun({"gpus": 1}, torch.device("cpu"))
    assert calls == []
    relaunch_under_torchrun({"gpus": 3}, torch.device("cpu"))
    (argv, env), = calls
    assert argv[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3",
                         os.path.abspath("stages/train.py")]
    assert argv[6:] == ["--scale", "1.0"] and "OMP_NUM_THREADS" in env
    monkeypatch.setenv("LOCAL_RANK", "0")  # inside torchrun: no second relaunch
    relaunch_under_torchrun({"gpus": 3}, torch.device("cpu"))
    assert len(calls) == 1 and distributed.launched()


def test_fast_png_decoding_gives_pil_pixels_and_leaves_other_files_to_pil(tmp_path):
    from PIL import Image

    from hms_core.data.dataset import _read_png
    from hms_core.data.fastpng import decode_rgb8

    rgb = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    fast = decode_rgb8(tmp_path / "rgb.png")
    slow = torch.from_numpy(_read_png(tmp_path / "rgb.png", "RGB").copy()).permute(2, 0, 1)
    assert torch.equal(fast, slow) and fast.stride() == slow.stride()
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
    (tmp_path / "truncated.png").write_bytes((tmp_path / "rgb.png").read_bytes()[:100])
    for name in ("palette.png", "grey.png", "rgba.png", "truncated.png", "missing.png"):
        assert decode_rgb8(tmp_path / name) is None, name


def test_step_time_bench_prints_a_timed_row_per_crop():
    """bench/step_time.py runs on the CPU and prints, per crop, four positive step times and their ratio."""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "bench/step_time.py", "--crops", "32", "48", "--batch", "2",
                          "--repeats", "1", "--device", "cpu"], cwd=root, capture_output=True, text=True,
                         check=True).stdout
    rows = [line.strip("| ").split(" | ") for line in out.splitlines() if line.startswith(("| 32 ", "| 48 "))]
    assert [r[0] for r in rows] == ["32", "48"]
    assert all(len(r) == 6 and all(float(v) > 0 for v in r[1:]) for r in rows)
