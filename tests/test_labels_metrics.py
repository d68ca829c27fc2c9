"""Label grouping against the official table; metrics against a hand-checked matrix."""
import numpy as np
import pytest
from cityscapesscripts.helpers.labels import labels as official

from hms_core.data.labels import build_grouping
from hms_core.evaluate.metrics import confusion_matrix, scores


def test_category_grouping_follows_official_table():
    g = build_grouping("category")
    assert g.class_names == ("flat", "construction", "object", "nature", "sky", "human", "vehicle")
    for label in official:
        if label.id < 0:
            continue
        expected = 255 if label.category == "void" or label.ignoreInEval else g.class_names.index(label.category)
        assert g.lut[label.id] == expected, label.name
    assert g.lut[26] == g.class_names.index("vehicle")   # car
    assert g.lut[17] == g.class_names.index("object")    # pole


def test_category_with_void_keeps_every_label():
    g = build_grouping("category_with_void")
    assert g.num_classes == 8
    for label in official:
        if label.id >= 0:
            assert g.lut[label.id] == label.categoryId
    assert g.lut[29] == 7  # caravan is a vehicle in the official table


def test_trainid_grouping_has_19_classes():
    g = build_grouping("trainid")
    assert g.num_classes == 19 and g.class_names[0] == "road" and g.class_names[18] == "bicycle"
    assert g.lut[7] == 0 and g.lut[33] == 18 and g.lut[0] == 255


def test_unknown_ids_and_unknown_mode():
    g = build_grouping("category")
    assert g.unknown_ids(np.array([[7, 40], [200, 26]], dtype=np.uint8)) == [40, 200]
    with pytest.raises(ValueError, match="data.grouping"):
        build_grouping("fine")


def test_confusion_matrix_and_scores_by_hand():
    target = np.array([0, 0, 0, 1, 1, 2, 255, 2])
    pred = np.array([0, 0, 1, 1, 0, 2, 1, 2])
    cm = confusion_matrix(pred, target, 3)
    assert cm.tolist() == [[2, 1, 0], [1, 1, 0], [0, 0, 2]]
    s = scores(cm)
    # IoU: 2/(3+3-2)=0.5, 1/(2+2-1)=1/3, 2/2=1
    assert s["iou"] == pytest.approx([0.5, 1 / 3, 1.0])
    assert s["mIoU"] == pytest.approx((0.5 + 1 / 3 + 1) / 3)
    assert s["pixel_acc"] == pytest.approx(5 / 7)
    assert s["mean_class_acc"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)


def test_absent_class_is_left_out_of_the_mean():
    cm = confusion_matrix(np.array([0, 1]), np.array([0, 1]), 3)
    s = scores(cm)
    assert np.isnan(s["iou"][2]) and s["mIoU"] == 1.0
