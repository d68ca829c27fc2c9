"""Named param sets (presets) and the convert stage that brings an images/ + masks/ dataset in."""
import subprocess
import sys

import numpy as np
import pytest
import yaml
from conftest import ROOT, tiny_params
from PIL import Image
from test_pipeline_labelmap import own_dataset

from hms_core.config import ParamsError, validate
from hms_core.data.labelmap import load_label_map
from hms_core.tools.main import main as hms
from hms_core.tools.preset import flatten, merged, set_arguments


def test_preset_leaves_become_dvc_set_arguments():
    preset = {"data": {"root": "data/raw/converted", "convert": {"splits": ["train", "val"]}},
              "train": {"steps": 400, "lr": 0.001}}
    assert flatten(preset) == {"data.root": "data/raw/converted", "data.convert.splits": ["train", "val"],
                               "train.steps": 400, "train.lr": 0.001}
    assert set_arguments(preset) == ["-S", "data.root=data/raw/converted", "-S", 'data.convert.splits=["train", "val"]',
                                     "-S", "train.steps=400", "-S", "train.lr=0.001"]
    params = merged(tiny_params(), preset)
    assert params["train"]["steps"] == 400 and params["train"]["batch_size"] == 2  # the rest kept


def test_camvid_preset_is_valid_and_its_label_map_covers_every_class():
    preset = yaml.safe_load((ROOT / "presets" / "camvid.yaml").read_text())
    validate(merged(tiny_params(), preset))
    lut = load_label_map(ROOT / "presets" / "camvid_label_map.yaml")
    classes = (ROOT.parent / "shared" / "datasets" / "camvid-dev" / "classes.txt")
    n = len(classes.read_text().split()) if classes.is_file() else 12
    assert all(lut[i] != 255 for i in range(n))


def test_default_params_are_three_experts_and_the_shared_preset_gives_the_one_network_model():
    default = validate(yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert (default["hms"]["mode"], default["scales"], default["finetune"]["train_all"]) == \
        ("experts", [0.5, 1.0, 2.0], True)
    shared = validate(merged(default, yaml.safe_load((ROOT / "presets" / "shared.yaml").read_text())))
    assert (shared["hms"]["mode"], shared["scales"], shared["hms"]["shared_pairs"]) == ("shared", [1.0], [[0.5, 1.0]])


def test_camvid_preset_is_the_one_network_model_and_experts_yaml_gives_back_the_default_pipeline():
    """presets/camvid.yaml picks the one-network model (what presets/shared.yaml gives); adding
    presets/experts.yaml after it runs the default three-expert pipeline on the same frames."""
    default = validate(yaml.safe_load((ROOT / "params.yaml").read_text()))
    read = lambda name: yaml.safe_load((ROOT / "presets" / name).read_text())  # noqa: E731
    camvid = validate(merged(default, read("camvid.yaml")))
    assert camvid == validate(merged(merged(default, read("shared.yaml")), read("camvid.yaml")))
    experts = validate(merged(camvid, read("experts.yaml")))
    assert (experts["scales"], experts["hms"], experts["train"]["crop"]) == (default["scales"], default["hms"], 256)


def test_gpu_presets_are_valid_alone_and_combined_later_file_winning(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    gpu, synthetic = "presets/cityscapes_gpu.yaml", "presets/synthetic_1024x2048.yaml"
    assert hms(["run", gpu, synthetic, "--dry-run", "--", "-S", "seed=1", "--name", "gpu-s1"]) == 0
    command = capsys.readouterr().err
    assert command.rstrip().endswith("-S data.synthetic.width=2048 -S seed=1 --name gpu-s1")  # after --: to dvc
    assert "-S trunk=resnet50" in command and "-S output_stride=8" in command
    assert "-S train.steps=200" in command and "-S train.steps=20000" not in command  # the later file wins
    assert "-S data.synthetic.height=1024 -S data.synthetic.width=2048" in command
    params = validate(merged(tiny_params(), yaml.safe_load((ROOT / gpu).read_text())))
    assert params["model"]["head_channels"] == 256 and params["train"]["crop"] == 1024


def test_bad_preset_is_refused_before_dvc_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {steps: many}\n")
    assert hms(["run", str(bad), "--dry-run"]) == 1
    assert "'train.steps' must be an integer" in capsys.readouterr().err
    assert hms(["run", str(tmp_path / "missing.yaml"), "--dry-run"]) == 1


def _convert_stage(tmp_path, convert: dict) -> subprocess.CompletedProcess:
    params = tiny_params(data={"convert": convert})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return subprocess.run([sys.executable, str(ROOT / "stages" / "convert.py"), "--out", "data/raw/converted"],
                          cwd=tmp_path, capture_output=True, text=True)


def test_convert_stage_writes_both_splits_and_the_label_map(tmp_path):
    src = own_dataset(tmp_path / "own")
    label_map = tmp_path / "map.yaml"
    label_map.write_text("to: labelIds\nmap: {0: sky, 1: building, 2: road, 3: car, 4: vegetation, 5: unlabeled}\n")
    proc = _convert_stage(tmp_path, {"root": str(src), "splits": ["train", "val"], "label_map": str(label_map)})
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "data" / "raw" / "converted"
    for split, n in (("train", 4), ("val", 3)):
        images = sorted((out / "leftImg8bit" / split).rglob("*_leftImg8bit.png"))
        labels = sorted((out / "gtFine" / split).rglob("*_gtFine_labelIds.png"))
        assert len(images) == len(labels) == n
        stem = labels[0].name[: -len("_gtFine_labelIds.png")]
        assert np.array_equal(np.asarray(Image.open(labels[0])), np.asarray(Image.open(src / "masks" / split / f"{stem}.png")))
    assert (out / "label_map.yaml").read_text() == label_map.read_text()


def test_convert_stage_without_a_source_writes_an_empty_folder_and_bad_sources_nothing(tmp_path):
    assert _convert_stage(tmp_path, {"root": "none", "splits": ["train", "val"], "label_map": "none"}).returncode == 0
    assert list((tmp_path / "data" / "raw" / "converted").iterdir()) == []
    (tmp_path / "x").mkdir()
    proc = _convert_stage(tmp_path / "x",
                          {"root": str(tmp_path / "nowhere"), "splits": ["train"], "label_map": str(tmp_path / "m.yaml")})
    assert proc.returncode == 1 and "data.convert.root: no dataset folder at" in proc.stderr
    assert not (tmp_path / "x" / "data" / "raw" / "converted").exists()
    with pytest.raises(ParamsError, match="'data.convert.label_map' must be a label-map file"):
        validate(tiny_params(data={"convert": {"root": "somewhere", "splits": ["train"], "label_map": "none"}}))
