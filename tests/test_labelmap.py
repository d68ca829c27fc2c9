"""Label maps: own dataset ids -> official label ids; class ids -> label ids and colours."""
import numpy as np
import pytest
from cityscapesscripts.helpers.labels import labels as official
from cityscapesscripts.helpers.labels import name2label

from hms_core.data.labelmap import (
    UNMAPPED,
    category_label_ids,
    class_colors,
    class_label_ids,
    load_label_map,
    unmapped_ids,
)
from hms_core.data.labels import build_grouping


def test_representative_label_of_each_category():
    assert category_label_ids() == {"void": 0, "flat": 7, "construction": 11, "object": 17, "nature": 21,
                                    "sky": 23, "human": 24, "vehicle": 26}
    # Each representative groups back to its own category.
    g = build_grouping("category_with_void")
    for i, (category, label_id) in enumerate(category_label_ids().items()):
        assert g.lut[label_id] == i, category


def test_class_ids_to_label_ids_round_trip_through_the_grouping():
    for mode in ("trainid", "category", "category_with_void"):
        g = build_grouping(mode)
        ids = class_label_ids(mode)
        assert len(ids) == g.num_classes
        assert g.lut[ids].tolist() == list(range(g.num_classes)), mode
    assert class_label_ids("trainid").tolist() == [l.id for l in sorted(
        (l for l in official if 0 <= l.trainId < 255), key=lambda l: l.trainId)]
    assert class_colors("trainid")[13].tolist() == list(name2label["car"].color)
    assert class_colors("category_with_void")[0].tolist() == [0, 0, 0]


def _write(tmp_path, text):
    path = tmp_path / "label_map.yaml"
    path.write_text(text)
    return path


def test_label_ids_by_name_or_id(tmp_path):
    lut = load_label_map(_write(tmp_path, "to: labelIds\nmap:\n  0: unlabeled\n  1: Road\n  2: traffic light\n"
                                          "  3: 26\n  255: unlabeled\n"))
    assert lut.dtype == np.uint8 and lut.shape == (256,)
    assert lut[[0, 1, 2, 3, 255]].tolist() == [0, 7, 19, 26, 0]
    assert lut[4] == UNMAPPED and lut[254] == UNMAPPED
    assert unmapped_ids(lut, np.array([[0, 4], [9, 1]], dtype=np.uint8)) == [4, 9]


def test_categories_take_their_representative_label(tmp_path):
    lut = load_label_map(_write(tmp_path, "to: category\nmap: {0: void, 1: flat, 2: Vehicle, 3: nature, 4: human}\n"))
    assert lut[:5].tolist() == [0, 7, 26, 21, 24]
    # Through the default grouping a category target lands in its category.
    g = build_grouping("category")
    assert [g.class_names[c] for c in g.apply(lut[1:5])] == ["flat", "vehicle", "nature", "human"]


@pytest.mark.parametrize("text, message", [
    ("to: labelIds\nmap:\n  0: road\n  5: cars\n", r"label_map.yaml: source id 5 maps to 'cars'"),
    ("to: labelIds\nmap:\n  7: 40\n", r"source id 7 maps to 40"),
    ("to: labelIds\nmap:\n  3: null\n", r"source id 3 maps to None"),
    ("to: category\nmap:\n  2: road\n", r"source id 2 maps to 'road'; expected a category name"),
    ("to: labelIds\nmap:\n  300: road\n", r"source id 300 must be an integer in \[0, 255\]"),
    ("to: trainIds\nmap:\n  0: road\n", r"'to' must be one of labelIds, category"),
    ("map:\n  0: road\n", r"expected exactly the keys 'to'"),
    ("to: labelIds\nmap: [road]\n", r"'map' must be a non-empty mapping"),
    ("to: [unclosed\n", r"not valid YAML"),
])
def test_bad_label_maps_name_the_file_and_the_entry(tmp_path, text, message):
    with pytest.raises(ValueError, match=message) as info:
        load_label_map(_write(tmp_path, text))
    assert "label_map.yaml" in str(info.value)


def test_missing_label_map_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data.label_map: no label-map file at .*nothing.yaml"):
        load_label_map(tmp_path / "nothing.yaml")
