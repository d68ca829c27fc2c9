"""Bad input gives one clear error naming the file or key, and leaves no output behind."""
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, tiny_params
from PIL import Image

from hms_core.config import ParamsError, validate
from hms_core.data.dataset import DataError, find_pairs, prepare_dataset
from hms_core.data.labels import build_grouping
from hms_core.data.synthetic import generate_dataset
from hms_core.io import save_checkpoint
from hms_core.models.segmodel import build_seg_model
from hms_core.models.transplant import TransplantError, transplant


@pytest.fixture
def raw(tmp_path):
    root = tmp_path / "raw"
    generate_dataset(root, {"train": 2, "val": 1}, 48, 64, seed=1, progress=False)
    return root


def _first(root, kind):
    folder, pattern = ("leftImg8bit", "*_leftImg8bit.png") if kind == "image" else ("gtFine", "*_labelIds.png")
    return sorted((root / folder / "train").glob(f"*/{pattern}"))[0]


def _prepare(root, out):
    return prepare_dataset(root, out, build_grouping("category"), ["train", "val"])


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match=r"data.root: dataset root .*nowhere does not exist"):
        find_pairs(tmp_path / "nowhere", "train")


def test_image_without_label_and_label_without_image(raw):
    label = _first(raw, "label")
    label.unlink()
    with pytest.raises(DataError, match="image has no label"):
        find_pairs(raw, "train")
    image = _first(raw, "image")
    image.unlink()
    Image.new("L", (64, 48)).save(label)
    with pytest.raises(DataError, match="label has no image"):
        find_pairs(raw, "train")


def test_empty_split(raw):
    for p in (raw / "leftImg8bit" / "val").glob("*/*.png"):
        p.unlink()
    for p in (raw / "gtFine" / "val").glob("*/*.png"):
        p.unlink()
    with pytest.raises(DataError, match="split 'val' is empty"):
        find_pairs(raw, "val")


@pytest.mark.parametrize("fault,message", [
    ("size", r"label size \(32, 32\) differs from its image"),
    ("unknown_ids", r"label ids \[40\] are not in the official Cityscapes table"),
    ("truncated", "unreadable or corrupt PNG"),
    ("not_png", "unreadable or corrupt PNG"),
])
def test_prepare_names_the_bad_file_and_writes_nothing(raw, tmp_path, fault, message):
    label, image = _first(raw, "label"), _first(raw, "image")
    if fault == "size":
        Image.new("L", (32, 32), 7).save(label)
    elif fault == "unknown_ids":
        ids = np.asarray(Image.open(label)).copy()
        ids[0, 0] = 40
        Image.fromarray(ids).save(label)
    elif fault == "truncated":
        image.write_bytes(image.read_bytes()[:200])
    else:
        label.write_bytes(b"not a png at all")
    bad = label if fault in ("size", "unknown_ids", "not_png") else image
    with pytest.raises(DataError, match=message) as err:
        _prepare(raw, tmp_path / "prepared")
    assert str(bad) in str(err.value)
    assert not (tmp_path / "prepared").exists() and not (tmp_path / "prepared.tmp").exists()


@pytest.mark.parametrize("edit,message", [
    ({"trunk": "vgg16"}, "'trunk' must be one of resnet50, resnet101, mobilenet_v3_large, mit_b0, got 'vgg16'"),
    ({"head": "fcn"}, "'head' must be one of deeplabv3plus, deeplabv3, segformer, got 'fcn'"),
    ({"data": {"grouping": "fine"}}, "'data.grouping' must be one of category, category_with_void, trainid"),
    ({"scales": []}, "'scales' must be a non-empty list of positive numbers"),
    ({"scales": [0.5, -1.0, 1.0]}, "'scales' must be a list of positive numbers"),
    ({"scales": [0.5, 2.0]}, "'scales' must be a list that contains 1.0"),
    ({"scales": [0.5, 1, 2]}, r"'scales' must be scales written as decimals \(1.0, not 1: DVC names"),
    ({"train": {"lr": "fast"}}, "'train.lr' must be a positive number, got 'fast'"),
    ({"train": {"steps": 2.5}}, "'train.steps' must be an integer >= 1, got 2.5"),
    ({"train": {"hflip": "yes"}}, "'train.hflip' must be true or false"),
    ({"evaluate": {"hms_scales": [[0.5, 1.0, 3.0]]}}, r"'evaluate.hms_scales\[0\]' must be scales of experts"),
    ({"output_stride": 8}, "'output_stride' must be 16 for trunk mobilenet_v3_large"),
    ({"head": "deeplabv3", "model": {"attention_features": "concat"}},
     r"'model.attention_features' must be decoder for head deeplabv3 \(only deeplabv3plus has a stride-4"),
    ({"model": {"attention_features": "aspp"}}, "'model.attention_features' must be one of decoder, concat"),
    ({"pretrained": "/elsewhere/resnet.pt"}, r"'pretrained' must be none, imagenet or a state-dict file under weights/"),
    ({"pretrained": "weights/../x.pt"}, r"'pretrained' must be none, imagenet or a state-dict file under weights/"),
    ({"hms": {"shared_pairs": [0.5, 1.0]}}, r"'hms.shared_pairs' must be a non-empty list of distinct pairs"),
    ({"hms": {"shared_pairs": [[1.0, 0.5]]}}, r"'hms.shared_pairs' must be .* with low < high"),
    ({"hms": {"shared_pairs": [[0.5, 1.0], [0.5, 1.0]]}}, r"'hms.shared_pairs' must be a non-empty list of distinct"),
])
def test_params_errors_name_the_key(edit, message):
    with pytest.raises(ParamsError, match=message):
        validate(tiny_params(**edit))


@pytest.mark.parametrize("runtime,message", [
    ({"nodes": 2}, r"'runtime.rdzv_endpoint' must be host:port of one of the 2 nodes \(runtime.nodes > 1"),
    ({"nodes": 0}, "'runtime.nodes' must be an integer >= 1, got 0"),
    ({"rdzv_endpoint": "node001"}, r"'runtime.rdzv_endpoint' must be none or host:port \(e.g. node001:29500\)"),
    ({"rdzv_endpoint": "node001:http"}, "'runtime.rdzv_endpoint' must be none or host:port"),
    ({"rdzv_endpoint": "node001:70000"}, r"with a port in \[1, 65535\], got 'node001:70000'"),
    ({"rdzv_endpoint": ":29500"}, "'runtime.rdzv_endpoint' must be none or host:port"),
    ({"rdzv_endpoint": "my node:29500"}, "'runtime.rdzv_endpoint' must be none or host:port"),
    ({"rdzv_id": ""}, "'runtime.rdzv_id' must be a non-empty string"),
])
def test_bad_multi_node_params_name_the_key(runtime, message):
    with pytest.raises(ParamsError, match=message):
        validate(tiny_params(runtime=runtime))


def test_good_rendezvous_endpoints_pass():
    for endpoint in ("node001:29500", "10.1.2.3:29500", "[fe80::1]:29500", "gpu-01.cluster.local:1"):
        validate(tiny_params(runtime={"nodes": 2, "rdzv_endpoint": endpoint}))


def test_train_stage_with_a_bad_endpoint_exits_nonzero_with_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(runtime={"nodes": 2,
                                                                              "rdzv_endpoint": "node001"})))
    proc = subprocess.run([sys.executable, str(ROOT / "stages" / "train.py"), "--scale", "1.0", "--out", "m",
                           "--checkpoint", "c.pt", "--live", "live"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "'runtime.rdzv_endpoint' must be none or host:port" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "m").exists()


def test_unknown_and_missing_keys():
    params = tiny_params()
    params["train"]["learning_rate"] = 0.1
    with pytest.raises(ParamsError, match="unknown key 'train.learning_rate'"):
        validate(params)
    params = tiny_params()
    del params["finetune"]["aux_weight"]
    with pytest.raises(ParamsError, match="missing key 'finetune.aux_weight'"):
        validate(params)


def test_transplant_names_key_and_shapes(tmp_path, tiny_meta):
    paths = {}
    for s in (0.5, 1.0):
        state = build_seg_model(tiny_meta).state_dict()
        if s == 1.0:
            state["classifier.weight"] = torch.zeros(9, tiny_meta["head_channels"], 1, 1)
        paths[s] = tmp_path / f"scale_{s}.pt"
        save_checkpoint(paths[s], {"meta": tiny_meta, "state_dict": state})
    with pytest.raises(TransplantError, match=r"scale_1.0.pt: classifier.weight has shape \(9, 16, 1, 1\), "
                                              r"HMS branches.s1.classifier.weight expects \(5, 16, 1, 1\)"):
        transplant({**tiny_meta, "mode": "experts", "scales": [0.5, 1.0]}, paths)


def test_prepare_stage_exits_nonzero_with_one_line(raw, tmp_path):
    _first(raw, "label").write_bytes(b"garbage")
    params = tiny_params()
    params["data"]["root"] = str(raw)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run([sys.executable, str(ROOT / "stages" / "prepare.py"), "--out", "prepared"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "unreadable or corrupt PNG" in errors[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "prepared").exists()
