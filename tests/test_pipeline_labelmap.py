"""End to end on an own dataset: images/ + masks/ + classes.txt -> `hms convert` -> label
map -> `dvc repro` with the official cross-check, which must score the ground truth through the map."""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import copy_pipeline, init_and_repro, run_command, tiny_params
from PIL import Image

from hms_core.data.synthetic import generate_dataset

ROOT = Path(__file__).resolve().parents[1]
ROW = "hms_0.5-1.0-2.0"
# The dataset's own classes (mask value = line number from 0) and the official label ids they are drawn from;
# every other label of the synthetic scenes becomes "Unlabelled".
CLASSES = ["Sky", "Building", "Road", "Car", "Tree", "Unlabelled"]
DRAWN_FROM = {"Sky": 23, "Building": 11, "Road": 7, "Car": 26, "Tree": 21}
DATA = "mydata"


def own_dataset(dst: Path) -> Path:
    """A tiny images/ + masks/ + classes.txt dataset made from the synthetic generator's scenes."""
    synthetic = dst / "synthetic"
    sizes = tiny_params()["data"]["synthetic"]
    generate_dataset(synthetic, {"train": sizes["train"], "val": sizes["val"]}, sizes["height"], sizes["width"],
                     seed=5, progress=False)
    own = np.full(256, CLASSES.index("Unlabelled"), dtype=np.uint8)
    for name, label_id in DRAWN_FROM.items():
        own[label_id] = CLASSES.index(name)
    src = dst / "src"
    for split in ("train", "val"):
        (src / "images" / split).mkdir(parents=True)
        (src / "masks" / split).mkdir(parents=True)
        for image in sorted((synthetic / "leftImg8bit" / split).rglob("*_leftImg8bit.png")):
            stem = image.name[: -len("_leftImg8bit.png")]
            shutil.copy(image, src / "images" / split / f"{stem}.png")
            label = image.parents[3] / "gtFine" / split / image.parent.name / f"{stem}_gtFine_labelIds.png"
            Image.fromarray(own[np.asarray(Image.open(label))]).save(src / "masks" / split / f"{stem}.png")
    (src / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return src


def convert(src: Path, repo: Path) -> None:
    """Convert both splits into ``repo/mydata`` and complete the label-map skeleton."""
    for split in ("train", "val"):
        run_command([sys.executable, "-m", "hms_core.tools.main", "convert", "--images", str(src / "images" / split),
                     "--masks", str(src / "masks" / split), "--classes", str(src / "classes.txt"), "--out", DATA,
                     "--split", split], repo)
    label_map = repo / DATA / "label_map.yaml"
    text = label_map.read_text()
    assert "  4: null" in text and "  5: null" in text  # Tree and Unlabelled are not official names
    label_map.write_text(text.replace("  4: null", "  4: vegetation").replace("  5: null", "  5: unlabeled"))


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("repo_labelmap")
    copy_pipeline(dst)
    convert(own_dataset(tmp_path_factory.mktemp("own")), dst)
    params = tiny_params(data={"root": DATA, "label_map": f"{DATA}/label_map.yaml"})
    assert params["evaluate"]["official_check"] is True and params["data"]["grouping"] == "category"
    init_and_repro(dst, params)
    return dst


def test_ground_truth_holds_own_ids(repo):
    values = set()
    for gt in (repo / DATA / "gtFine" / "val").rglob("*_gtFine_labelIds.png"):
        values |= set(np.unique(np.asarray(Image.open(gt))).tolist())
    assert values <= set(range(len(CLASSES))) and {0, 1, 2} <= values


def test_official_check_agrees_through_the_label_map(repo):
    report = json.loads((repo / "metrics" / "official.json").read_text())
    assert report["enabled"] is True and report["row"] == ROW and report["label_mapped"] is True
    assert report["agreement"] is True and report["max_abs_diff"] <= report["tolerance"]
    ours = json.loads((repo / "metrics" / "eval.json").read_text())[ROW]
    assert report["ours"]["mIoU"] == ours["mIoU"]
    assert report["official"]["mIoU"] == pytest.approx(ours["mIoU"], abs=report["tolerance"])
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert {"evaluate", "official_check"} <= set(lock["stages"])


def test_predictions_folder_names_the_val_images(repo):
    index = json.loads((repo / "data" / "predictions" / "index.json").read_text())
    assert index["enabled"] is True and index["row"] == ROW and index["grouping"] == "category"
    images = sorted(p.relative_to(repo).as_posix() for p in (repo / DATA / "leftImg8bit" / "val").rglob("*.png"))
    assert [e["image"] for e in index["predictions"]] == images
    for entry in index["predictions"]:
        with Image.open(repo / "data" / "predictions" / entry["prediction"]) as im:
            assert im.mode == "L" and int(np.asarray(im).max()) < 7


def test_disabled_check_reruns_only_the_last_stages(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["evaluate"]["official_check"] = False
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run_command(["dvc", "repro"], repo)
    assert "Running stage 'evaluate'" in out and "Running stage 'official_check'" in out
    assert "Running stage 'train" not in out
    assert json.loads((repo / "metrics" / "official.json").read_text()) == {"enabled": False}
    assert [p.name for p in (repo / "data" / "predictions").iterdir()] == ["index.json"]
    assert (repo / "metrics" / "table.md").is_file()
