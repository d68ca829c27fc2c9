"""Our scores against the official Cityscapes pixel-level evaluator on the same predictions."""
import numpy as np
import pytest
from PIL import Image

from hms_core.data import prepare_split, read_index
from hms_core.evaluation import results
from hms_core.labels import build_grouping
from hms_core.metrics import confusion_matrix
from hms_core.official import OfficialCheck, official_scores
from hms_core.synthetic import generate_dataset


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    generate_dataset(root, {"val": 3}, 64, 128, seed=3, progress=False)
    return root


@pytest.mark.parametrize("mode", ["category", "trainid"])
def test_official_evaluator_agrees_with_our_confusion_matrix(raw, tmp_path, mode):
    grouping = build_grouping(mode)
    prepare_split(raw, "val", tmp_path / "prepared", grouping)
    index = read_index(tmp_path / "prepared", "val")
    rng = np.random.default_rng(0)
    check = OfficialCheck("hms", [e["image"] for e in index], grouping, tmp_path / "pred")
    cm = 0
    for i, entry in enumerate(index):
        target = np.asarray(Image.open(entry["label"]))
        # A prediction that is right on about 60% of pixels and random elsewhere.
        pred = np.where(rng.random(target.shape) < 0.6, np.minimum(target, grouping.num_classes - 1),
                        rng.integers(0, grouping.num_classes, target.shape)).astype(np.uint8)
        cm = cm + confusion_matrix(pred, target, grouping.num_classes)
        check.collect("hms", i, pred)
        check.collect("other row", i, np.zeros_like(pred))  # ignored: not the checked row
    ours = results({"hms": cm}, grouping.class_names)["hms"]
    report = check.finish(ours)
    assert report["max_abs_diff"] <= 1e-4
    assert 0.1 < report["official"]["mIoU"] < 0.9
    assert report["official"]["mIoU"] == pytest.approx(ours["mIoU"], abs=1e-4)


def test_disagreement_is_an_error(raw, tmp_path):
    grouping = build_grouping("category")
    prepare_split(raw, "val", tmp_path / "prepared", grouping)
    index = read_index(tmp_path / "prepared", "val")
    check = OfficialCheck("hms", [e["image"] for e in index], grouping, tmp_path / "pred")
    for i, entry in enumerate(index):
        check.collect("hms", i, np.asarray(Image.open(entry["label"])).clip(0, 6))
    wrong = {"mIoU": 0.5, "iou": {name: 0.5 for name in grouping.class_names}}
    with pytest.raises(ValueError, match="official evaluator disagrees"):
        check.finish(wrong)


def test_official_check_needs_an_official_mode(raw, tmp_path):
    with pytest.raises(ValueError, match="evaluate.official_check"):
        official_scores([], [], build_grouping("category_with_void"))
