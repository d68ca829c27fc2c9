"""Every row of the results table on tiny models: single scales, pooling, TTA, HMS, explicit,
flip; the evaluation loop, per-class attention, budgets and the pictures."""
import numpy as np
import pytest
import torch
from PIL import Image

from hms_core.data.dataset import normalise
from hms_core.data.labels import build_grouping
from hms_core.data.resize import resize, resize_image
from hms_core.data.synthetic import render_scene
from hms_core.evaluate.metrics import confusion_matrix
from hms_core.evaluate.metrics import scores as metric_scores
from hms_core.evaluate.pictures import confusion_figure, prediction_panel
from hms_core.evaluate.rows import (
    Row,
    attention_maps,
    attention_means,
    branches_match,
    evaluate,
    predict_rows,
    predict_windows,
    results,
    row_budget,
    row_specs,
    table_rows,
    window_starts,
)
from hms_core.models.explicit import ExplicitAttention
from hms_core.models.hms import HMS, fuse_higher, hierarchical_fusion
from hms_core.models.multiscale import multiscale_forward
from hms_core.runtime.speed import Speed

SCALES = [0.5, 1.0, 2.0]
CHAINS = [[0.5, 1.0], [0.5, 1.0, 2.0]]
CPU = Speed(torch.device("cpu"))


def _randomise_bn(model: torch.nn.Module) -> None:
    """Random BatchNorm statistics, so that every branch and head gives non-constant outputs."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


@pytest.fixture
def hms(tiny_meta):
    model = HMS({**tiny_meta, "mode": "experts", "scales": SCALES})
    _randomise_bn(model)
    return model.eval()


@pytest.fixture
def image():
    return torch.randn(2, 3, 24, 40)


def test_fuse_higher_shrinks_pred_then_mixes_with_non_constant_maps():
    pred = torch.arange(16.0).view(1, 1, 4, 4)  # from scale 2, at twice the size of p_s
    p_s = torch.tensor([[[[10.0, -2.0], [4.0, 0.0]]]])
    a_s = torch.tensor([[[[0.0, 0.25], [0.5, 1.0]]]])
    # Bilinear halving (align_corners=False) averages each 2x2 block.
    shrunk = torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]])
    expected = a_s * p_s + (1 - a_s) * shrunk  # [[2.5, 2.875], [7.25, 0.0]]
    assert torch.allclose(fuse_higher(pred, p_s, a_s), expected)
    assert torch.allclose(expected, torch.tensor([[[[2.5, 2.875], [7.25, 0.0]]]]))


def test_chain_with_non_constant_maps_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    p = {0.5: torch.randn(1, 3, 4, 6, generator=g), 1.0: torch.randn(1, 3, 8, 12, generator=g),
         2.0: torch.randn(1, 3, 16, 24, generator=g)}
    a = {0.5: torch.rand(1, 1, 4, 6, generator=g), 1.0: torch.rand(1, 1, 8, 12, generator=g)}
    pred = a[1.0] * p[1.0] + (1 - a[1.0]) * resize(p[2.0], (8, 12))
    pred = resize(a[0.5] * p[0.5], (8, 12)) + (1 - resize(a[0.5], (8, 12))) * pred
    got = hierarchical_fusion({0.5: (p[0.5], a[0.5]), 1.0: (p[1.0], a[1.0]), 2.0: (p[2.0], None)})
    assert torch.allclose(got, pred, atol=1e-6)


def test_rows_of_the_table():
    rows = row_specs(SCALES, CHAINS, explicit_scales=SCALES)
    assert list(rows) == ["scale_0.5", "scale_1.0", "scale_2.0", "avg", "max", "avg_0.5-1.0",
                          "tta_0.5-1.0-2.0", "tta_flip_0.5-1.0-2.0", "hms_0.5-1.0", "hms_0.5-1.0-2.0", "explicit_0.5-1.0-2.0"]
    assert rows["tta_flip_0.5-1.0-2.0"] == Row("tta", (0.5, 1.0, 2.0), True)
    flipped = row_specs(SCALES, CHAINS, flip=True)
    assert "tta_flip_0.5-1.0-2.0" not in flipped and all(r.flip for r in flipped.values())


def test_predict_rows_computes_each_row_by_its_formula(hms, image, tiny_meta):
    explicit = ExplicitAttention({**tiny_meta, "mode": "experts", "scales": SCALES}).eval()
    rows = row_specs(SCALES, CHAINS, explicit_scales=SCALES)
    scores, outputs = predict_rows(hms, image, rows, explicit)
    size = (24, 40)
    with torch.no_grad():
        p = {s: hms.scale_forward(image, s)[0] for s in SCALES}
        for s in SCALES:
            assert torch.allclose(scores[f"scale_{s}"], resize(p[s], size), atol=1e-5)
        at_one = torch.stack([resize(p[s], size) for s in SCALES])
        assert torch.allclose(scores["avg"], at_one.mean(0), atol=1e-5)
        assert torch.allclose(scores["max"], at_one.amax(0), atol=1e-5)
        for chain in CHAINS:
            name = "hms_" + "-".join(f"{s:.1f}" for s in chain)
            assert torch.allclose(scores[name], hms(image, chain), atol=1e-5)
        # TTA: the scale-1.0 expert at every scale, softmax probabilities averaged.
        one = hms.branch(1.0)
        logits = [one.forward_features(resize_image(image, (round(24 * s), round(40 * s))))[0] for s in SCALES]
        probs = [resize(p_s, size).softmax(1) for p_s in logits]
        assert torch.allclose(scores["tta_0.5-1.0-2.0"], torch.stack(probs).mean(0), atol=1e-5)
        assert torch.allclose(scores["tta_0.5-1.0-2.0"].sum(1), torch.ones(2, *size), atol=1e-5)
        assert torch.allclose(scores["explicit_0.5-1.0-2.0"], explicit(image), atol=1e-5)
    # The HMS pass's attention: every scale but the highest.
    assert sorted(s for s, o in outputs.items() if o.attention is not None) == [0.5, 1.0]
    assert not torch.allclose(scores["tta_0.5-1.0-2.0"], scores["avg"].softmax(1), atol=1e-3)


def test_flip_rows_average_the_mirrored_prediction(hms, image):
    rows = {"hms": Row("hms", (0.5, 1.0, 2.0), True), "tta": Row("tta", (0.5, 1.0, 2.0), True),
            "plain": Row("hms", (0.5, 1.0, 2.0), False)}
    scores, _ = predict_rows(hms, image, rows)
    mirrored, _ = predict_rows(hms, image.flip(-1), rows)
    # A flip-averaged prediction is mirror-symmetric: f(mirror(I)) = mirror(f(I)).
    for name in ("hms", "tta"):
        assert torch.allclose(mirrored[name], scores[name].flip(-1), atol=1e-5)
    assert not torch.allclose(mirrored["plain"], scores["plain"].flip(-1), atol=1e-3)
    # Per scale: (f(I) + mirror(f(mirror(I)))) / 2.
    with torch.no_grad():
        plain = multiscale_forward(hms, image, [1.0])[1.0].logits
        back = multiscale_forward(hms, image.flip(-1), [1.0])[1.0].logits.flip(-1)
        assert torch.allclose(multiscale_forward(hms, image, [1.0], flip=True)[1.0].logits, (plain + back) / 2,
                              atol=1e-6)


class _Loader(list):
    """A list of (image, label) batches is all :func:`evaluate` reads."""


def test_evaluate_accumulates_every_row_and_the_attention_per_class(hms, image):
    g = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 5, (2, 24, 40), generator=g)
    labels[:, :3] = 255  # ignored pixels
    loader = _Loader([(image[:1], labels[:1]), (image[1:], labels[1:])])
    rows = row_specs(SCALES, CHAINS)
    seen = []
    result = evaluate(hms, loader, rows, 5, CPU, on_prediction=lambda row, i, pred: seen.append((row, i)))
    scores, outputs = predict_rows(hms, image, rows)
    for name in rows:
        assert np.array_equal(result.confusion[name], confusion_matrix(scores[name].argmax(1), labels, 5))
        assert result.confusion[name].sum() == int((labels != 255).sum())
    assert sorted(seen) == sorted((row, i) for row in rows for i in range(2))
    means = attention_means(result, [f"c{i}" for i in range(5)])
    assert set(means) == {"a_0.5", "a_1.0"}
    a = resize(outputs[0.5].attention, (24, 40))[:, 0]
    for c in range(5):
        assert means["a_0.5"][f"c{c}"] == pytest.approx(float(a[labels == c].mean()), rel=1e-5)


def _explicit_from(hms: HMS, tiny_meta: dict) -> ExplicitAttention:
    """An explicit model whose branches hold ``hms``'s weights (what frozen fine-tuning of the
    same experts gives), with a random explicit head."""
    explicit = ExplicitAttention({**tiny_meta, "mode": "experts", "scales": SCALES})
    explicit.branches.load_state_dict(hms.branches.state_dict())
    _randomise_bn(explicit.attention)
    return explicit.eval()


def test_explicit_row_fused_from_the_hms_pass_equals_its_own_pass(hms, image, tiny_meta):
    explicit = _explicit_from(hms, tiny_meta)
    assert branches_match(hms, explicit)
    rows = row_specs(SCALES, CHAINS, explicit_scales=SCALES)
    name = "explicit_0.5-1.0-2.0"
    reused, _ = predict_rows(hms, image, rows, explicit, reuse_explicit=True)
    own, _ = predict_rows(hms, image, rows, explicit)
    assert torch.allclose(reused[name], own[name], atol=1e-5) and torch.allclose(own[name], explicit(image))
    with torch.no_grad():  # fine-tuned branches (finetune.train_all) differ: no reuse
        next(explicit.branch(2.0).parameters()).add_(0.1)
    assert not branches_match(hms, explicit)


def test_windows_cover_the_image_with_overlap():
    assert window_starts(10, 16) == [0]
    for length, window in ((40, 16), (24, 16), (100, 30), (17, 16)):
        starts = window_starts(length, window)
        covered = np.zeros(length, dtype=int)
        for s in starts:
            covered[s:s + window] += 1
        assert covered.min() >= 1 and starts[-1] + window == length
        assert all(b - a <= 2 * window // 3 for a, b in zip(starts, starts[1:]))  # at least 1/3 overlap


def test_windowed_prediction_averages_the_windows_over_each_pixel(hms, image):
    rows = row_specs(SCALES, CHAINS)
    whole, maps = predict_windows(hms, image, rows, window=0)
    scores, outputs = predict_rows(hms, image, rows)
    assert all(torch.equal(whole[n], scores[n]) for n in rows)
    assert maps.keys() == attention_maps(outputs, (24, 40)).keys()
    windowed, wmaps = predict_windows(hms, image, rows, window=16)  # 24 x 40: 2 x 4 windows
    left, left_outputs = predict_rows(hms, image[..., :16, :16], rows)
    for n in rows:
        assert windowed[n].shape == scores[n].shape
        # Pixels (0..7, 0..9) lie in the first window only.
        assert torch.allclose(windowed[n][..., :8, :10], left[n][..., :8, :10], atol=1e-5)
    # The attention maps are averaged over the windows like the scores: the first window's own there.
    left_maps = attention_maps(left_outputs, (16, 16))
    assert set(wmaps) == {0.5, 1.0}
    for s, a in wmaps.items():
        assert a.shape == (2, 1, 24, 40)
        assert torch.allclose(a[..., :8, :10], left_maps[s][..., :8, :10], atol=1e-6)


def _fitted_hms(tiny_meta: dict, images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> HMS:
    """An HMS fitted for 40 steps to ``images``. An untrained network predicts nearly the same
    logits at every pixel, so rounding alone decides its argmax; a fitted one is decisive, as a
    trained model is."""
    torch.manual_seed(0)
    model = HMS({**tiny_meta, "num_classes": num_classes, "mode": "experts", "scales": SCALES}).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    size = tuple(labels.shape[-2:])
    ce = lambda logits: torch.nn.functional.cross_entropy(resize(logits, size), labels, ignore_index=255)
    for _ in range(40):
        outputs = multiscale_forward(model, images, SCALES)
        loss = ce(hierarchical_fusion(outputs)) + sum(ce(o.logits) for o in outputs.values())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def test_evaluate_under_bfloat16_autocast_agrees_with_float32(tiny_meta):
    """What a user accepts of ``runtime.amp: bf16`` (CPU autocast runs it here): on synthetic
    scenes and a model fitted to them, every row's mIoU within 0.5 points of float32's and at
    least 99 % of the pixels predicted alike."""
    grouping = build_grouping("category")
    rng = np.random.default_rng(0)
    scenes = [render_scene(rng, 48, 64) for _ in range(2)]
    images = normalise(torch.from_numpy(np.stack([im for im, _ in scenes])).permute(0, 3, 1, 2))
    labels = torch.from_numpy(grouping.lut[np.stack([lab for _, lab in scenes])]).long()
    model = _fitted_hms(tiny_meta, images, labels, grouping.num_classes)
    rows = row_specs(SCALES, CHAINS)
    preds = {"fp32": {}, "bf16": {}}
    runs = {}
    for amp, speed in (("fp32", CPU), ("bf16", Speed(torch.device("cpu"), amp="bf16"))):
        runs[amp] = evaluate(model, _Loader([(images, labels)]), rows, grouping.num_classes, speed,
                             on_prediction=lambda row, i, pred, amp=amp: preds[amp].__setitem__((row, i), pred))
    at = lambda amp, name: np.stack([preds[amp][(name, i)] for i in range(2)])
    assert len(np.unique(at("fp32", "hms_0.5-1.0-2.0"))) >= 3  # decisive, not one class everywhere
    for name in rows:
        assert (at("fp32", name) == at("bf16", name)).mean() >= 0.99, name
        fp32, bf16 = runs["fp32"].confusion[name], runs["bf16"].confusion[name]
        assert fp32.sum() == bf16.sum() == int((labels != 255).sum())
        assert abs(metric_scores(fp32)["mIoU"] - metric_scores(bf16)["mIoU"]) <= 0.005, name


def test_budgets_count_images_honestly():
    meta = {"mode": "experts", "images": 100, "finetune_images": 40, "train_all": False,
            "trunk": "t", "head": "h", "epochs": 2.0}
    rows = row_specs(SCALES, CHAINS, explicit_scales=SCALES)
    budget = {name: row_budget(row, meta, {"finetune_images": 40}) for name, row in rows.items()}
    assert budget["scale_0.5"] == (100, 0) and budget["tta_0.5-1.0-2.0"] == (100, 0)
    assert budget["avg"] == (300, 0) and budget["hms_0.5-1.0"] == (200, 40)
    assert budget["hms_0.5-1.0-2.0"] == (300, 40) and budget["explicit_0.5-1.0-2.0"] == (300, 40)
    assert row_budget(rows["avg"], {**meta, "train_all": True})[1] == 40
    assert row_budget(rows["avg"], {**meta, "mode": "shared"})[0] == 100
    # 0.25 has no expert of its own: it runs the 0.5 expert, which the chain already counts
    chain = Row("hms", (0.25, 0.5, 1.0, 2.0))
    assert row_budget(chain, {**meta, "scales": [0.5, 1.0, 2.0]})[0] == 300
    res = results({name: np.eye(7, dtype=np.int64) for name in rows}, build_grouping("category").class_names)
    table = table_rows(res, rows, meta, {"finetune_images": 40})
    assert [(r["train images"], r["finetune images"]) for r in table] == list(budget.values())


def test_pictures_are_written_whole(tiny_meta, tmp_path):
    grouping = build_grouping("category")
    model = HMS({**tiny_meta, "num_classes": 7, "mode": "experts", "scales": SCALES}).eval()
    image, label = torch.randn(3, 24, 40), torch.randint(0, 7, (24, 40))
    rows = row_specs(SCALES, CHAINS)
    prediction_panel(model, image, label, grouping, rows, tmp_path / "panel.png", title="val 0")
    confusion_figure(np.arange(49).reshape(7, 7), grouping.class_names, "cm", tmp_path / "cm.png")
    for name in ("panel.png", "cm.png"):
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200
            pixels = np.asarray(im.convert("RGB"))
        assert pixels.std() > 10  # not a blank figure
    assert not list(tmp_path.glob("*.tmp"))
