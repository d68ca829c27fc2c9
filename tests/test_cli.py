"""The ``hms`` command (hms_core/tools/main.py): subcommands, their --help, exit status 0 / 1 / 2."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import hms_core.tools.convert as convert_module
import hms_core.tools.preset as preset_module
from hms_core.tools.main import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]

# Each command's --help must name these arguments.
ARGUMENTS = {
    "predict": ["inputs", "--model", "--scales", "--out", "--device", "--batch-size"],
    "export": ["--model", "--scales", "--height", "--width", "--out"],
    "convert": ["--images", "--masks", "--classes", "--out", "--split", "--city", "--label-map"],
    "run": ["preset", "--queue", "--dry-run", "-- DVC_ARG"],
    "seeds": ["--repo", "--metric", "--hms", "--all", "--all-commits", "--out", "--json"],
    "report": ["--root", "--out", "--runs", "--readme", "--group"],
}


def hms(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``hms ARGS`` without the installed script."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "hms_core.tools.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)


def _dataset(root: Path) -> Path:
    """A tiny images/ + masks/ + classes.txt dataset: two 12x20 images with class-index masks."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("background\nroad\ncar\n")
    rng = np.random.default_rng(0)
    for stem in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)).save(root / "images" / f"{stem}.png")
        Image.fromarray(rng.integers(0, 3, (12, 20), dtype=np.uint8)).save(root / "masks" / f"{stem}.png")
    return root


def _convert_args(src: Path, out: Path) -> list[str]:
    return ["convert", "--images", str(src / "images"), "--masks", str(src / "masks"),
            "--classes", str(src / "classes.txt"), "--out", str(out), "--split", "train"]


def test_help_lists_every_command():
    proc = hms("--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: hms ")
    for name in COMMANDS:
        assert f"    {name} " in proc.stdout, name


def test_no_command_prints_help_and_exits_2():
    proc = hms()
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("usage: hms ") and all(name in proc.stderr for name in COMMANDS)


def test_unknown_command_is_a_usage_error():
    proc = hms("frobnicate")
    assert proc.returncode == 2 and "invalid choice: 'frobnicate'" in proc.stderr


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_command_help_names_its_arguments(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ")
    assert out.startswith(f"usage: hms {name} ")
    for arg in ARGUMENTS[name]:
        assert arg in out, (name, arg)


def test_command_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["convert", "--images", "x"])
    assert exit_.value.code == 2
    assert "hms convert: error: the following arguments are required: --masks" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["seeds", "--no-such-option"])
    assert exit_.value.code == 2


def test_convert_through_the_command(tmp_path):
    src, out = _dataset(tmp_path / "src"), tmp_path / "dataset"
    proc = hms(*_convert_args(src, out), "--city", "town")
    assert proc.returncode == 0, proc.stderr
    assert f"hms convert: 2 images -> {out / 'leftImg8bit' / 'train' / 'town'}" in proc.stderr
    for stem in ("a", "b"):
        assert (out / "leftImg8bit" / "train" / "town" / f"{stem}_leftImg8bit.png").is_file()
        label = out / "gtFine" / "train" / "town" / f"{stem}_gtFine_labelIds.png"
        assert label.read_bytes() == (src / "masks" / f"{stem}.png").read_bytes()
    assert (out / "label_map.yaml").is_file()
    (src / "masks" / "b.png").unlink()
    proc = hms(*_convert_args(src, tmp_path / "other"))
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("hms convert: error: ") and "b.png: image has no mask" in last


def test_unexpected_error_is_one_line_with_status_1(tmp_path, monkeypatch, capsys):
    def boom(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(convert_module, "convert", boom)
    args = _convert_args(_dataset(tmp_path / "src"), tmp_path / "out")
    assert main(args) == 1
    assert capsys.readouterr().err.splitlines() == [
        "hms convert: error: RuntimeError: boom second line (hms --traceback convert ... shows where)"]
    with pytest.raises(RuntimeError, match="boom"):
        main(["--traceback", *args])


def test_run_passes_arguments_after_dashes_to_dvc(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert main(["run", "presets/cityscapes_gpu.yaml", "--dry-run", "--", "-S", "seed=1", "--name", "x"]) == 0
    assert capsys.readouterr().err.rstrip().endswith("-S seed=1 --name x")
    calls = []
    monkeypatch.setattr(preset_module.subprocess, "call", lambda cmd: calls.append(cmd) or 255)
    assert main(["run", "presets/cityscapes_gpu.yaml", "--queue"]) == 1  # dvc's failure: status 1
    assert calls and calls[0][1:6] == ["-m", "dvc", "exp", "run", "--queue"]
    assert capsys.readouterr().err.splitlines()[-1] == "hms run: error: dvc exp run failed (exit status 255)"


def test_installed_script():
    script = shutil.which("hms", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if script is None:
        pytest.skip("the hms script is not installed (pip install -r requirements.txt installs it)")
    proc = subprocess.run([script, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: hms ")
    assert subprocess.run([script], capture_output=True, text=True).returncode == 2
