"""Own datasets: images/ + masks/ + class list -> Cityscapes layout -> prepare with a label map."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from hms_core.data.dataset import DataError, find_pairs, prepare_split, read_index
from hms_core.data.labelmap import load_label_map
from hms_core.data.labels import build_grouping
from hms_core.tools.main import main

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["background", "Road", "car", "Traffic_Light", "tree"]


def _source(tmp_path):
    """A tiny dataset in the common layout: a PNG and a JPEG image, an L and a palette mask."""
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    (src / "classes.txt").write_text("\n".join(CLASSES) + "\n\n")
    rng = np.random.default_rng(0)
    masks = {}
    for stem, ext in (("a", ".png"), ("b", ".jpg")):
        Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)).save(src / "images" / f"{stem}{ext}")
        masks[stem] = rng.integers(0, len(CLASSES), (12, 20), dtype=np.uint8)
    masks["a"][0, :3] = 255  # "ignore", outside the class list
    Image.fromarray(masks["a"]).save(src / "masks" / "a.png")
    palette = Image.fromarray(masks["b"]).convert("P")
    # A palette whose colours are not the indices: a grey conversion would change the values.
    palette.putpalette([255 - i for i in range(256) for _ in range(3)])
    palette.save(src / "masks" / "b.png")
    return src, masks


def _convert(src, out, split="train", *extra):
    return main(["convert", "--images", str(src / "images"), "--masks", str(src / "masks"), "--classes",
                 str(src / "classes.txt"), "--out", str(out), "--split", split, *extra])


def test_round_trip_through_prepare_with_the_label_map(tmp_path):
    src, masks = _source(tmp_path)
    root = tmp_path / "dataset"
    assert _convert(src, root, "train", "--city", "town") == 0
    pairs = find_pairs(root, "train")
    assert [(p.name, q.name) for p, q in pairs] == [("a_leftImg8bit.png", "a_gtFine_labelIds.png"),
                                                    ("b_leftImg8bit.png", "b_gtFine_labelIds.png")]
    assert all(p.parent.name == "town" for pair in pairs for p in pair)
    # PNG images and L masks are copied byte for byte; the JPEG's pixels survive as PNG.
    assert pairs[0][0].read_bytes() == (src / "images" / "a.png").read_bytes()
    assert pairs[0][1].read_bytes() == (src / "masks" / "a.png").read_bytes()
    with Image.open(src / "images" / "b.jpg") as jpg, Image.open(pairs[1][0]) as png:
        assert png.format == "PNG" and np.array_equal(np.asarray(png), np.asarray(jpg.convert("RGB")))
    for (_, label), stem in zip(pairs, "ab"):
        assert np.array_equal(np.asarray(Image.open(label)), masks[stem])

    # The skeleton: official names pre-filled, the rest null, 255 -> unlabeled.
    text = (root / "label_map.yaml").read_text()
    skeleton = yaml.safe_load(text)
    assert skeleton == {"to": "labelIds", "map": {0: None, 1: "road", 2: "car", 3: "traffic light", 4: None,
                                                  255: "unlabeled"}}
    with pytest.raises(ValueError, match=r"label_map.yaml: source id 0 maps to None"):
        load_label_map(root / "label_map.yaml")
    (root / "label_map.yaml").write_text(text.replace("0: null", "0: unlabeled").replace("4: null", "4: vegetation"))
    lut = load_label_map(root / "label_map.yaml")

    grouping = build_grouping("category")
    stats = prepare_split(root, "train", tmp_path / "prepared", grouping, lut)
    assert stats["images"] == 2
    index = read_index(tmp_path / "prepared", "train")
    for entry, stem in zip(index, "ab"):
        classes = np.asarray(Image.open(entry["label"]))
        # background and 255 -> ignored; Road -> flat; car -> vehicle; light -> object; tree -> nature
        expected = np.array([255, 0, 6, 2, 3], dtype=np.uint8)
        m = masks[stem]
        assert np.array_equal(classes[m < 5], expected[m[m < 5]])
        assert (classes[m == 255] == 255).all()


def test_second_split_keeps_the_completed_label_map(tmp_path):
    src, _ = _source(tmp_path)
    root = tmp_path / "dataset"
    assert _convert(src, root, "train") == 0
    (root / "label_map.yaml").write_text("to: category\nmap: {0: void, 1: flat, 2: vehicle, 3: object, 4: nature, "
                                         "255: void}\n")
    assert _convert(src, root, "val") == 0
    assert "to: category" in (root / "label_map.yaml").read_text()
    assert len(find_pairs(root, "val")) == 2 and (root / "leftImg8bit" / "val" / "custom").is_dir()


def test_prepare_names_ids_missing_from_the_label_map(tmp_path):
    src, _ = _source(tmp_path)
    root = tmp_path / "dataset"
    assert _convert(src, root) == 0
    (tmp_path / "partial.yaml").write_text("to: category\nmap: {0: void, 1: flat, 2: vehicle, 3: object}\n")
    with pytest.raises(DataError, match=r"a_gtFine_labelIds.png: ids \[4, 255\] have no entry in the label map"):
        prepare_split(root, "train", tmp_path / "prepared", build_grouping("category"),
                      load_label_map(tmp_path / "partial.yaml"))


def test_prepare_stage_reads_data_label_map(tmp_path):
    src, _ = _source(tmp_path)
    root = tmp_path / "dataset"
    assert _convert(src, root, "train") == 0 and _convert(src, root, "val") == 0
    (root / "label_map.yaml").write_text("to: category\nmap: {0: void, 1: flat, 2: vehicle, 3: object, 4: nature, "
                                         "255: void}\n")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert params["data"]["label_map"] == "none"
    params["data"].update(root=str(root), label_map=str(root / "label_map.yaml"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run([sys.executable, str(ROOT / "stages" / "prepare.py"), "--params", "params.yaml",
                           "--out", "prepared"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "prepared" / "meta.json").read_text())
    assert meta["splits"]["train"]["images"] == 2 and meta["splits"]["train"]["class_pixels"]["vehicle"] > 0


@pytest.mark.parametrize("change, message", [
    (lambda src: (src / "masks" / "b.png").unlink(), "b.jpg: image has no mask"),
    (lambda src: Image.fromarray(np.full((12, 20), 7, np.uint8)).save(src / "masks" / "a.png"),
     "a.png: values [7] are not indices of the 5 classes"),
    (lambda src: Image.fromarray(np.zeros((12, 20, 3), np.uint8)).save(src / "masks" / "a.png"),
     "a.png: mask mode RGB; expected a single-channel"),
    (lambda src: Image.fromarray(np.zeros((10, 20), np.uint8)).save(src / "masks" / "a.png"),
     "a.png: size (20, 10) differs from its image"),
    (lambda src: (src / "classes.txt").write_text("road\n\ncar\n"), "classes.txt: line 2 is blank"),
])
def test_errors_are_one_line(tmp_path, capsys, change, message):
    src, _ = _source(tmp_path)
    change(src)
    assert _convert(src, tmp_path / "dataset") == 1
    err = capsys.readouterr().err.strip().splitlines()  # after the progress bar, if it started
    assert err[-1].startswith("hms convert: error: ") and message in err[-1], err
