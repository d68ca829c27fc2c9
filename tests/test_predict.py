"""Prediction: HMS inference with attention, the four output files, the command line."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hms_core.data.dataset import load_sample
from hms_core.data.labelmap import class_colors, class_label_ids
from hms_core.data.resize import resize
from hms_core.io import save_checkpoint
from hms_core.models.hms import HMS
from hms_core.models.multiscale import multiscale_forward
from hms_core.tools.main import main
from hms_core.tools.predict import (
    check_scales,
    find_images,
    load_model,
    normalise,
    overlay,
    predict_image,
    read_image,
)

ROOT = Path(__file__).resolve().parents[1]
SCALES = [0.5, 1.0, 2.0]


def _model(tmp_path, meta, mode="experts", scales=SCALES):
    """A randomly initialised HMS model saved like the finetune stage saves it."""
    torch.manual_seed(0)
    meta = {**meta, "mode": mode, "scales": scales}
    path = tmp_path / f"hms_{mode}.pt"
    save_checkpoint(path, {"meta": meta, "state_dict": HMS(meta).state_dict()})
    return path


def _image(path, height, width, seed=0):
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return rgb


def test_normalise_matches_training(tmp_path):
    rgb = _image(tmp_path / "x.png", 6, 7)
    Image.fromarray(np.zeros((6, 7), dtype=np.uint8)).save(tmp_path / "y.png")
    expected, _ = load_sample({"image": str(tmp_path / "x.png"), "label": str(tmp_path / "y.png")})
    assert torch.equal(normalise(read_image(tmp_path / "x.png")), expected)
    assert np.array_equal(read_image(tmp_path / "x.png"), rgb)


@pytest.mark.parametrize("mode", ["experts", "shared"])
def test_predict_image_is_hms_inference_with_its_attention(tmp_path, tiny_meta, mode):
    model = load_model(_model(tmp_path, tiny_meta, mode), torch.device("cpu"))
    image = torch.randn(2, 3, 40, 56)
    logits, attention = predict_image(model, image, SCALES)
    with torch.no_grad():
        expected = model(image, SCALES)
    assert logits.shape == (2, 5, 40, 56)
    assert torch.allclose(logits, expected, atol=1e-6)
    # Every scale but the highest enters the fusion through its attention.
    assert sorted(attention) == [0.5, 1.0]
    assert all(a.shape == (2, 1, 40, 56) for a in attention.values())
    single, single_att = predict_image(model, image[0], SCALES)
    assert torch.allclose(single, logits[0], atol=1e-5) and single_att[0.5].shape == (1, 40, 56)


@pytest.mark.parametrize("bias, expected", [(30.0, 1.0), (-30.0, 0.0)])
def test_predicted_attention_is_the_one_the_fusion_used(tmp_path, tiny_meta, bias, expected):
    """Scale 0.5's head driven to a = 1 (or 0): its map reads 1 (0) everywhere, and the fused logits are
    scale 0.5's alone (the chain over 1.0 and 2.0 alone): pred' = up(a p_0.5) + (1 - up(a)) pred."""
    model = load_model(_model(tmp_path, tiny_meta), torch.device("cpu"))
    model.attention[model.attention_key(0.5)].net[-1].bias.data.fill_(bias)
    image = torch.randn(1, 3, 40, 56)
    logits, attention = predict_image(model, image, SCALES)
    assert torch.allclose(attention[0.5], torch.full_like(attention[0.5], expected), atol=1e-6)
    with torch.no_grad():
        outputs = multiscale_forward(model, image, SCALES)
    p_05, size_1 = outputs[0.5].logits, tuple(outputs[1.0].logits.shape[-2:])
    alone = resize(resize(p_05, size_1), (40, 56)) if expected else predict_image(model, image, [1.0, 2.0])[0]
    assert torch.allclose(logits, alone, atol=1e-4)
    assert not torch.allclose(attention[1.0], attention[0.5], atol=1e-3)   # each scale's own head


def test_scales_are_checked(tmp_path, tiny_meta):
    experts = load_model(_model(tmp_path, tiny_meta), torch.device("cpu"))
    assert check_scales(experts, [2.0, 0.5, 1.0]) == SCALES
    with pytest.raises(ValueError, match="must contain 1.0"):
        check_scales(experts, [0.5, 2.0])
    with pytest.raises(ValueError, match=r"experts for \[0.5, 1.0, 2.0\] only"):
        check_scales(experts, [0.75, 1.0])
    shared = load_model(_model(tmp_path, tiny_meta, "shared"), torch.device("cpu"))
    assert check_scales(shared, [0.75, 1.0, 1.5]) == [0.75, 1.0, 1.5]


def test_overlay_blends_official_colours():
    colors = class_colors("category")
    assert colors[0].tolist() == [128, 64, 128] and colors[6].tolist() == [0, 0, 142]  # road, car
    image = np.full((1, 2, 3), 100, dtype=np.uint8)
    out = overlay(image, np.array([[0, 6]]), colors)
    assert out.tolist() == [[[114, 82, 114], [50, 50, 121]]]


def test_cli_writes_four_kinds_of_files(tmp_path, tiny_meta):
    model = _model(tmp_path, tiny_meta)
    images = tmp_path / "images"
    _image(images / "a.png", 40, 56, 1)
    _image(images / "sub" / "b.png", 40, 56, 2)
    Image.fromarray(_image(tmp_path / "tmp.png", 33, 47, 3)).save(images / "sub" / "c.jpg")
    out = tmp_path / "out"
    assert main(["predict", str(images), "--model", str(model), "--scales", "0.5", "1.0", "2.0", "--out", str(out),
                 "--device", "cpu", "--batch-size", "2"]) == 0
    label_ids = set(class_label_ids("category").tolist())
    for stem, size in (("a", (56, 40)), ("b", (56, 40)), ("c", (47, 33))):
        names = [f"{stem}_classIds.png", f"{stem}_labelIds.png", f"{stem}_overlay.png",
                 f"{stem}_attention_0.5.png", f"{stem}_attention_1.0.png"]
        for name in names:
            with Image.open(out / name) as im:
                assert im.size == size, name
        classes = np.asarray(Image.open(out / f"{stem}_classIds.png"))
        labels = np.asarray(Image.open(out / f"{stem}_labelIds.png"))
        assert classes.max() < 5 and set(np.unique(labels).tolist()) <= label_ids
        assert np.array_equal(labels, class_label_ids("category")[classes])
        assert Image.open(out / f"{stem}_overlay.png").mode == "RGB"
        assert Image.open(out / f"{stem}_attention_0.5.png").mode == "L"
        assert not (out / f"{stem}_attention_2.0.png").exists()
    # The files equal a direct prediction of the same image.
    m = load_model(model, torch.device("cpu"))
    rgb = np.asarray(Image.open(images / "a.png").convert("RGB"))
    logits, _ = predict_image(m, normalise(rgb), SCALES)
    assert np.array_equal(np.asarray(Image.open(out / "a_classIds.png")), logits.argmax(0).numpy())


def test_cli_errors_are_one_line_with_exit_status_1(tmp_path, tiny_meta, capsys):
    model = _model(tmp_path, tiny_meta)
    (tmp_path / "empty").mkdir()
    bad = tmp_path / "bad" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"not a png")
    _image(tmp_path / "ok" / "x.png", 16, 16)
    cases = [
        ([str(tmp_path / "empty"), "--model", str(model)], "no images found"),
        ([str(tmp_path / "missing.png"), "--model", str(model)], "missing.png: no such image file or folder"),
        ([str(bad), "--model", str(model), "--out", str(tmp_path / "o")], "broken.png: unreadable image"),
        ([str(tmp_path / "ok"), "--model", str(tmp_path / "none.pt")], "none.pt: checkpoint not found"),
        ([str(tmp_path / "ok"), "--model", str(model), "--scales", "0.5", "2.0"], "must contain 1.0"),
        ([str(tmp_path / "ok"), "--model", str(model), "--scales", "0.75", "1.0"], "experts for"),
    ]
    for argv, message in cases:
        assert main(["predict", *argv, "--device", "cpu"]) == 1, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)


def test_find_images_rejects_colliding_stems(tmp_path):
    _image(tmp_path / "x" / "a.png", 8, 8)
    _image(tmp_path / "y" / "a.jpg", 8, 8)
    with pytest.raises(ValueError, match="same file name stem"):
        find_images([tmp_path])


def test_module_runs_from_the_repository_root(tmp_path, tiny_meta):
    model = _model(tmp_path, tiny_meta)
    _image(tmp_path / "img.png", 24, 32)
    proc = subprocess.run([sys.executable, "-m", "hms_core.tools.main", "predict", str(tmp_path / "img.png"), "--model",
                           str(model), "--out", str(tmp_path / "out"), "--device", "cpu"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "img_attention_0.5.png").is_file()
