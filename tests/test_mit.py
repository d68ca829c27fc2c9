"""The MiT-B0 trunk with the SegFormer head: shapes, HMS, transplant, pretrained files, params, export."""
import copy
import itertools
import types

import pytest
import torch
from conftest import tiny_params

from hms_core.config import ParamsError, validate
from hms_core.data.resize import resize, resize_image, scaled_size
from hms_core.evaluate import costs as costs_module
from hms_core.evaluate.costs import inference_costs
from hms_core.evaluate.rows import Row
from hms_core.io import save_checkpoint
from hms_core.models.explicit import ExplicitAttention
from hms_core.models.hms import hms_pair_loss, load_hms
from hms_core.models.segmodel import SegModel, build_seg_model
from hms_core.models.transplant import transplant
from hms_core.models.trunks import build_trunk
from hms_core.runtime.speed import Speed
from hms_core.tools.export import FixedScaleHMS, trace

transformers = pytest.importorskip("transformers")
from hms_core.models import mit  # noqa: E402  (needs transformers)

MIT_META = {"trunk": "mit_b0", "head": "segformer", "num_classes": 5, "output_stride": 32, "head_channels": 16,
            "atrous_rates": [2], "attention_channels": 8, "grouping": "category"}
SCALES = [0.5, 1.0, 2.0]


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    """Three randomly initialised MiT experts saved like the train stage saves them."""
    folder = tmp_path_factory.mktemp("mit_experts")
    paths = {}
    for i, s in enumerate(SCALES):
        torch.manual_seed(i)
        paths[s] = folder / f"scale_{s}.pt"
        save_checkpoint(paths[s], {"meta": {**MIT_META, "scale": s}, "state_dict": build_seg_model(MIT_META).state_dict()})
    return paths


@pytest.fixture(scope="module")
def hms_model(experts):
    torch.manual_seed(0)
    model, _ = transplant({**MIT_META, "mode": "experts", "scales": SCALES}, experts)
    return model.eval()


def test_trunk_returns_four_stages_at_strides_4_to_32():
    trunk = build_trunk("mit_b0", 32).eval()
    with torch.no_grad():
        out = trunk(torch.zeros(1, 3, 64, 96))
    widths = (32, 64, 160, 256)
    for i, (stride, width) in enumerate(zip((4, 8, 16, 32), widths)):
        assert out[f"stage{i + 1}"].shape == (1, width, 64 // stride, 96 // stride)
    assert out["low"] is out["stage1"] and out["out"] is out["stage4"]
    assert (trunk.low_channels, trunk.out_channels, trunk.output_stride) == (32, 256, 32)
    assert trunk.stage_channels == widths


def test_seg_model_logits_at_input_size_and_features_at_stride_4():
    model = build_seg_model(MIT_META).eval()
    with torch.no_grad():
        logits, features = model.forward_features(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 5, 64, 64)
    assert features.shape == (2, 16, 16, 16)  # head_channels wide, at stride 4: what attention reads
    # The head's own classifier is dropped: the 1x1 class classifier is the model's.
    assert not any(k.startswith("head.decoder.classifier") for k in model.state_dict())


def test_training_step_reaches_every_parameter():
    model = build_seg_model(MIT_META).train()
    image, target = torch.randn(2, 3, 64, 64), torch.randint(0, 5, (2, 64, 64))
    loss = torch.nn.functional.cross_entropy(model(image), target)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())


def test_hms_forward_pair_and_attention(hms_model):
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert hms_model(image, SCALES).shape == (1, 5, 64, 64)
        joint, p_lo, p_hi, a_lo = hms_model.pair_forward(image, 0.5, 1.0)
    assert joint.shape == p_hi.shape == (1, 5, 64, 64)
    assert p_lo.shape == (1, 5, 32, 32) and a_lo.shape == (1, 1, 32, 32)
    hms_pair_loss(joint, p_lo, p_hi, torch.zeros(1, 64, 64, dtype=torch.long), 0.05)
    # With the attention head's last conv at weight 0 and bias b, a_lo = sigmoid(b) everywhere:
    # a = 1 gives the low scale's logits upsampled, a = 0 the high scale's.
    model = copy.deepcopy(hms_model)
    last = model.attention[model.attention_key(0.5)].net[-1]
    with torch.no_grad():
        last.weight.zero_()
        for bias, expected in ((100.0, lambda lo, hi: resize(lo, (64, 64))), (-100.0, lambda lo, hi: hi)):
            last.bias.fill_(bias)
            joint, p_lo, p_hi, a_lo = model.pair_forward(image, 0.5, 1.0)
            assert torch.allclose(a_lo, torch.sigmoid(torch.tensor(bias)).expand_as(a_lo))
            assert torch.allclose(joint, expected(p_lo, p_hi), atol=1e-6)


def test_transplant_round_trip_reproduces_each_expert(hms_model, experts, tmp_path):
    image = torch.randn(1, 3, 64, 64)
    for s, path in experts.items():
        expert = build_seg_model(MIT_META)
        expert.load_state_dict(torch.load(path, weights_only=True)["state_dict"], strict=True)
        with torch.no_grad():
            p_s, _ = hms_model.scale_forward(image, s)
            x = resize_image(image, scaled_size(tuple(image.shape[-2:]), s))
            assert torch.allclose(p_s, expert.eval()(x), atol=1e-6)
    # Saved and reloaded like the finetune stage's output, the model computes the same.
    saved = tmp_path / "hms.pt"
    save_checkpoint(saved, {"meta": hms_model.meta, "state_dict": hms_model.state_dict()})
    reloaded = load_hms(saved).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(image, SCALES), hms_model(image, SCALES))


def test_explicit_baseline_and_costs_run_on_mit(experts, hms_model, monkeypatch):
    explicit, _ = transplant({**MIT_META, "mode": "experts", "scales": SCALES}, experts,
                             model_cls=ExplicitAttention)
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert explicit.eval()(image).shape == (2, 5, 64, 64)
    rows = {"hms": Row("hms", (0.5, 1.0)), "explicit": Row("explicit", tuple(SCALES))}
    clock = itertools.count(0.0, 0.04)  # every timed call takes 40 ms on this clock
    monkeypatch.setattr(costs_module, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    costs = inference_costs(hms_model, image, rows, Speed(torch.device("cpu")), explicit, repeats=1)
    # The HMS 0.5-1.0 row runs two experts and the 0.5 attention head; explicit, all of its model.
    hms_parts = (hms_model.branch(0.5), hms_model.branch(1.0), hms_model.attention[hms_model.attention_key(0.5)])
    assert costs["hms"]["params"] == sum(p.numel() for m in hms_parts for p in m.parameters())
    assert costs["explicit"]["params"] == sum(p.numel() for p in explicit.parameters())
    assert costs["hms"]["ms_per_image"] == pytest.approx(20.0)  # 40 ms for a batch of 2, warm-up untimed


def test_export_trace_equals_eager(hms_model):
    traced = trace(hms_model, [0.5, 1.0], 64, 64)
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = FixedScaleHMS(hms_model, [0.5, 1.0], 64, 64)(image)
        assert torch.allclose(traced(image), expected, atol=1e-5)


def _other_layout(state, prefix):
    """``state`` with the keys under ``prefix`` in the other transformers layout than the installed one's."""
    def other(key):
        new = mit._rename(key, to_new=True)
        return new if new != key else mit._rename(key, to_new=False)
    return {prefix + other(k[len(prefix):]) if k.startswith(prefix) else k: v for k, v in state.items()}


def _hf_state(tmp_path, other_layout):
    """A randomly initialised HuggingFace MiT-B0 ImageNet classifier (``segformer.*`` + ``classifier.*``)."""
    torch.manual_seed(1)
    config = mit.segformer_config(**mit.MIT_SIZES["mit_b0"])
    state = transformers.SegformerForImageClassification(config).state_dict()
    if other_layout:
        state = _other_layout(state, "segformer.")
    path = tmp_path / "mit_b0_imagenet.pt"
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("other_layout", [False, True])
def test_pretrained_file_lands_in_the_trunk_in_either_transformers_layout(tmp_path, other_layout):
    path, source = _hf_state(tmp_path, other_layout)
    trunk = build_trunk("mit_b0", 32, str(path))
    state = trunk.state_dict()
    assert state
    # Every trunk tensor comes from the file's encoder; the file's classifier is left out.
    by_value = {k: v for k, v in source.items() if k.startswith("segformer.")}
    assert len(by_value) == len(state)
    own = set(trunk.body.state_dict())
    for key, tensor in by_value.items():
        assert torch.equal(state["body." + mit._in_layout(key[len("segformer."):], own)], tensor), key


def test_pretrained_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    with pytest.raises(ValueError, match="pretrained: imagenet has no local file for mit_b0") as info:
        build_trunk("mit_b0", 32, "imagenet")
    assert "\n" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="pretrained: no state dict file"):
        build_trunk("mit_b0", 32, str(tmp_path / "nothing.pt"))
    torch.save(torch.nn.Conv2d(3, 4, 1).state_dict(), tmp_path / "conv.pt")
    with pytest.raises(ValueError, match=r"conv\.pt does not fit mit_b0") as info:
        build_trunk("mit_b0", 32, str(tmp_path / "conv.pt"))
    assert "\n" not in str(info.value)


def test_checkpoint_of_the_other_transformers_layout_loads():
    model = build_seg_model(MIT_META)
    other = _other_layout(_other_layout(model.state_dict(), "trunk.body."), "head.decoder.")
    assert set(other) != set(model.state_dict())  # really the other layout
    fresh = build_seg_model(MIT_META)
    fresh.load_state_dict(other, strict=True)
    for key, tensor in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], tensor), key


def test_wrong_combinations_fail_when_built():
    with pytest.raises(ValueError, match="head: expected segformer for trunk mit_b0"):
        SegModel("mit_b0", "deeplabv3plus", 5, 32)
    with pytest.raises(ValueError, match="head: expected deeplabv3plus or deeplabv3 for trunk resnet50"):
        SegModel("resnet50", "segformer", 5, 16)
    with pytest.raises(ValueError, match="output_stride: expected 32 for trunk mit_b0, got 16"):
        SegModel("mit_b0", "segformer", 5, 16)
    with pytest.raises(ValueError, match="output_stride: mit_b0 supports 32 only"):
        build_trunk("mit_b0", 16)


MIT_PARAMS = {"trunk": "mit_b0", "head": "segformer", "output_stride": 32}


@pytest.mark.parametrize("edit,message", [
    ({"head": "deeplabv3plus"}, r"'head' must be segformer for trunk mit_b0 \(the DeepLab heads need a dilated "
                                r"CNN trunk at stride 8 or 16\), got 'deeplabv3plus'"),
    ({"trunk": "resnet50", "output_stride": 16},
     r"'head' must be deeplabv3plus or deeplabv3 for trunk resnet50 \(head segformer needs a MiT trunk: mit_b0\)"),
    ({"output_stride": 16}, "'output_stride' must be 32 for trunk mit_b0, got 16"),
    ({"head": "deeplabv3plus", "trunk": "resnet50", "output_stride": 32},
     "'output_stride' must be 8 or 16 for trunk resnet50, got 32"),
    ({"pretrained": "imagenet"}, "'pretrained' must be none or a path to a state dict for trunk mit_b0"),
    ({"output_stride": 4}, "'output_stride' must be one of 8, 16, 32, got 4"),
])
def test_params_errors_name_the_key(edit, message):
    with pytest.raises(ParamsError, match=message):
        validate(tiny_params(**{**MIT_PARAMS, **edit}))


def test_params_accept_mit_with_segformer():
    validate(tiny_params(**MIT_PARAMS, pretrained="weights/mit_b0.pt"))
