"""Our scores against the official Cityscapes pixel-level evaluator on the same predictions."""
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from conftest import ROOT, tiny_params
from PIL import Image

from hms_core.config import ParamsError, validate
from hms_core.data.dataset import prepare_split, read_index
from hms_core.data.labelmap import load_label_map
from hms_core.data.labels import build_grouping
from hms_core.data.synthetic import generate_dataset
from hms_core.evaluate.metrics import confusion_matrix
from hms_core.evaluate.official import (
    INDEX_FILE,
    OfficialDisagreement,
    PredictionWriter,
    check_agreement,
    ground_truth_path,
    official_check,
    official_scores,
)
from hms_core.evaluate.rows import results
from hms_core.io import write_json

ROW = "hms_0.5-1.0-2.0"
# Own ids of a converted dataset: 0 sky, 1 building, 2 road, 3 car, 4 tree, 5 anything else.
OWN = {23: 0, 11: 1, 7: 2, 26: 3, 21: 4}
LABEL_MAP = "to: labelIds\nmap: {0: sky, 1: building, 2: road, 3: car, 4: vegetation, 5: unlabeled}\n"


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    generate_dataset(root, {"val": 3}, 64, 128, seed=3, progress=False)
    return root


def to_own_ids(root):
    """Rewrite the ground truth of ``root`` in place with the own ids of :data:`OWN`."""
    lut = np.full(256, 5, dtype=np.uint8)
    lut[list(OWN)] = list(OWN.values())
    for gt in sorted((root / "gtFine").rglob("*_gtFine_labelIds.png")):
        Image.fromarray(lut[np.asarray(Image.open(gt))]).save(gt)


def predict(index, grouping, out, row=ROW):
    """Write predictions right on about 60% of pixels with a PredictionWriter; return our scores of them."""
    rng = np.random.default_rng(0)
    cm = 0
    with PredictionWriter(out, row, [e["image"] for e in index], grouping.mode) as writer:
        for i, entry in enumerate(index):
            target = np.asarray(Image.open(entry["label"]))
            pred = np.where(rng.random(target.shape) < 0.6, np.minimum(target, grouping.num_classes - 1),
                            rng.integers(0, grouping.num_classes, target.shape)).astype(np.int64)
            cm = cm + confusion_matrix(pred, target, grouping.num_classes)
            writer.collect(row, i, pred)
            writer.collect("other row", i, np.zeros_like(pred))  # ignored: not the checked row
    return results({row: cm}, grouping.class_names)


def setup(raw, tmp_path, mode, label_map=None):
    """Prepared val split, predictions folder and eval.json of one row; returns (predictions, eval.json, ours)."""
    grouping = build_grouping(mode)
    prepare_split(raw, "val", tmp_path / "prepared", grouping, label_map)
    ours = predict(read_index(tmp_path / "prepared", "val"), grouping, tmp_path / "predictions")
    write_json(tmp_path / "eval.json", ours)
    return tmp_path / "predictions", tmp_path / "eval.json", ours[ROW]


@pytest.mark.parametrize("mode", ["category", "trainid"])
def test_official_evaluator_agrees_with_our_confusion_matrix(raw, tmp_path, mode):
    predictions, eval_json, ours = setup(raw, tmp_path, mode)
    report = official_check(predictions, eval_json, mode)
    assert report["agreement"] is True and report["row"] == ROW
    assert report["max_abs_diff"] <= report["tolerance"] == 1e-4
    assert 0.1 < report["official"]["mIoU"] < 0.9
    assert report["official"]["mIoU"] == pytest.approx(ours["mIoU"], abs=1e-4)
    assert set(report["ours"]) == set(report["official"]) == set(build_grouping(mode).class_names) | {"mIoU"}
    check_agreement(report)  # no error


def test_prediction_folder_layout(raw, tmp_path):
    predictions, _, _ = setup(raw, tmp_path, "category")
    index = json.loads((predictions / INDEX_FILE).read_text())
    assert index["enabled"] is True and index["row"] == ROW and index["grouping"] == "category"
    images = sorted((raw / "leftImg8bit" / "val").rglob("*_leftImg8bit.png"))
    assert [e["image"] for e in index["predictions"]] == [p.as_posix() for p in images]
    for entry, image in zip(index["predictions"], images):
        assert entry["prediction"] == f"{image.parent.name}/{image.name[:-len('_leftImg8bit.png')]}_classIds.png"
        with Image.open(predictions / entry["prediction"]) as im, Image.open(image) as source:
            assert im.mode == "L" and im.size == source.size
    assert not (tmp_path / "predictions.tmp").exists()


def test_disagreement_is_recorded_then_an_error(raw, tmp_path):
    predictions, eval_json, _ = setup(raw, tmp_path, "category")
    wrong = {ROW: {"mIoU": 0.5, "iou": {name: 0.5 for name in build_grouping("category").class_names}}}
    write_json(eval_json, wrong)
    report = official_check(predictions, eval_json, "category")
    assert report["agreement"] is False and report["max_abs_diff"] > 1e-4
    with pytest.raises(OfficialDisagreement, match=f"official evaluator disagrees with our scores of row {ROW}"):
        check_agreement(report)


def own_ids_setup(tmp_path, images: int, height: int, width: int):
    """A val split in own ids with its label map, predictions and our scores: ``(lut, predictions,
    eval_json, ours)``."""
    root = tmp_path / "own"
    generate_dataset(root, {"val": images}, height, width, seed=3, progress=False)
    to_own_ids(root)
    (tmp_path / "label_map.yaml").write_text(LABEL_MAP)
    lut = load_label_map(tmp_path / "label_map.yaml")
    return (lut, *setup(root, tmp_path, "category", lut))


def test_label_mapped_ground_truth_is_scored_through_the_map(tmp_path):
    lut, predictions, eval_json, ours = own_ids_setup(tmp_path, 3, 64, 128)
    report = official_check(predictions, eval_json, "category", lut)
    assert report["agreement"] is True and report["label_mapped"] is True
    assert report["official"]["mIoU"] == pytest.approx(ours["mIoU"], abs=1e-4)
    # The issue: the raw ground truth holds own ids, which the official evaluator misreads.
    assert official_check(predictions, eval_json, "category")["agreement"] is False


def test_ids_missing_from_the_label_map_name_the_file(tmp_path):
    lut, predictions, eval_json, _ = own_ids_setup(tmp_path, 2, 32, 64)
    partial = lut.copy()
    partial[5] = 255  # "anything else" no longer mapped
    with pytest.raises(ValueError, match=r"_gtFine_labelIds.png: ids \[5\] have no entry in the label map"):
        official_check(predictions, eval_json, "category", partial)


def test_unknown_ids_become_a_value_error_naming_the_file(raw, tmp_path):
    """The official evaluator calls sys.exit on ids it does not know; we raise one line instead."""
    gt = sorted((raw / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))[0]
    bad = tmp_path / "bad_gtFine_labelIds.png"
    ids = np.asarray(Image.open(gt)).copy()
    ids[0, 0] = 40
    Image.fromarray(ids).save(bad)
    pred = tmp_path / "pred.png"
    Image.fromarray(np.full(ids.shape, 7, np.uint8)).save(pred)
    with pytest.raises(ValueError, match=r"bad_gtFine_labelIds.png: label ids \[40\] are not official .*"
                                         r"Unknown label with id 40") as err:
        official_scores([pred], [bad], build_grouping("category"))
    assert "\n" not in str(err.value)
    Image.fromarray(np.full((ids.shape[0], 5), 7, np.uint8)).save(pred)  # another sys.exit: sizes differ
    with pytest.raises(ValueError, match="official Cityscapes evaluator stopped: Image widths of .* are not equal"):
        official_scores([pred], [gt], build_grouping("category"))


def test_writer_writes_whole_or_nothing(raw, tmp_path):
    images = [p.as_posix() for p in sorted((raw / "leftImg8bit" / "val").rglob("*.png"))]
    out = tmp_path / "predictions"
    with pytest.raises(ValueError, match=r"predictions: no prediction of row hms for val image .*\(1 of 3 written\)"):
        with PredictionWriter(out, "hms", images, "category") as writer:
            writer.collect("hms", 0, np.zeros((4, 4), np.int64))
    assert not out.exists() and not (tmp_path / "predictions.tmp").exists()
    with pytest.raises(RuntimeError):
        with PredictionWriter(out, "hms", images, "category") as writer:
            for i in range(3):
                writer.collect("hms", i, np.zeros((4, 4), np.int64))
            raise RuntimeError("evaluation failed")
    assert not out.exists() and not (tmp_path / "predictions.tmp").exists()


def test_disabled_writer_and_check(raw, tmp_path):
    images = [p.as_posix() for p in sorted((raw / "leftImg8bit" / "val").rglob("*.png"))]
    with PredictionWriter(tmp_path / "predictions", "hms", images, "category", enabled=False) as writer:
        writer.collect("hms", 0, np.zeros((4, 4), np.int64))
    assert [p.name for p in (tmp_path / "predictions").iterdir()] == [INDEX_FILE]
    assert json.loads((tmp_path / "predictions" / INDEX_FILE).read_text()) == {"enabled": False}
    with pytest.raises(ValueError, match="evaluate wrote no predictions"):
        official_check(tmp_path / "predictions", tmp_path / "eval.json", "category")


def test_official_check_needs_an_official_mode():
    with pytest.raises(ValueError, match="evaluate.official_check"):
        official_scores([], [], build_grouping("category_with_void"))


def test_params_refuse_official_check_with_category_with_void():
    params = tiny_params(data={"grouping": "category_with_void"})
    with pytest.raises(ParamsError, match=r"'evaluate.official_check' must be false with data.grouping "
                                          r"category_with_void \(the official evaluator scores only category "
                                          r"or trainid\), got True"):
        validate(params)
    validate(tiny_params(data={"grouping": "category_with_void"}, evaluate={"official_check": False}))
    validate(tiny_params(data={"grouping": "trainid"}))


def _stage(cwd, params):
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    return subprocess.run([sys.executable, str(ROOT / "stages" / "official.py"), "--predictions", "predictions",
                           "--eval", "eval.json", "--out", "official.json"], cwd=cwd, capture_output=True, text=True)


def test_stage_records_a_disagreement_then_fails(raw, tmp_path):
    setup(raw, tmp_path, "category")
    wrong = {ROW: {"mIoU": 0.5, "iou": {name: 0.5 for name in build_grouping("category").class_names}}}
    write_json(tmp_path / "eval.json", wrong)
    proc = _stage(tmp_path, tiny_params())
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "official evaluator disagrees" in errors[0] and "official.json" in errors[0]
    assert "Traceback" not in proc.stderr
    report = json.loads((tmp_path / "official.json").read_text())
    assert report["agreement"] is False and report["max_abs_diff"] > report["tolerance"]


def test_stage_disabled_writes_enabled_false(tmp_path):
    proc = _stage(tmp_path, tiny_params(evaluate={"official_check": False}))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "official.json").read_text()) == {"enabled": False}


def test_ground_truth_path():
    image = "root/leftImg8bit/val/town/x_000001_leftImg8bit.png"
    assert ground_truth_path(image).as_posix() == "root/gtFine/val/town/x_000001_gtFine_labelIds.png"
