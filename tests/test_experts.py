"""The three-expert default: scales without an expert, the equal-budget control, the rows beside HMS."""
import pytest
import torch
from conftest import tiny_params

from hms_core.config import ParamsError, validate
from hms_core.data.resize import resize, resize_image
from hms_core.evaluate.rows import Row, control_specs, method_label, row_specs
from hms_core.io import save_checkpoint
from hms_core.models.hms import HMS, nearest_expert, scale_key
from hms_core.models.segmodel import build_seg_model
from hms_core.models.transplant import single_network
from hms_core.train.jobs import control_steps, load_expert, pipeline_images


@pytest.mark.parametrize("scale, expert", [(0.5, 0.5), (0.25, 0.5), (0.1, 0.5), (0.75, 1.0), (0.6, 0.5),
                                           (1.2, 1.0), (1.5, None), (3.0, None), (2.0, 2.0)])
def test_nearest_expert_in_log_scale_never_the_top_one(scale, expert):
    # log distances: 0.6 is 0.18 from 0.5 and 0.51 from 1.0; 1.5 is nearer 2.0 (0.29) than 1.0 (0.41).
    assert nearest_expert([0.5, 1.0, 2.0], scale) == expert


def test_an_unseen_low_scale_runs_the_nearest_experts_weights_and_attention(tiny_meta):
    hms = HMS({**tiny_meta, "mode": "experts", "scales": [0.5, 1.0, 2.0]}).eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        p, a = hms.scale_forward(image, 0.25)
        x = resize_image(image, (16, 16))
        logits, features = hms.branches[scale_key(0.5)].forward_features(x)
        assert torch.equal(p, logits)
        assert torch.equal(a, resize(hms.attention[scale_key(0.5)](features), (16, 16)))
        assert hms(image, [0.25, 0.5, 1.0, 2.0]).shape == (1, tiny_meta["num_classes"], 64, 64)


def test_params_accept_a_chain_through_an_unseen_low_scale_and_refuse_one_above_the_experts():
    validate(tiny_params(evaluate={"hms_scales": [[0.25, 0.5, 1.0, 2.0]]}))
    with pytest.raises(ParamsError, match=r"evaluate.hms_scales\[0\]' must be scales of experts"):
        validate(tiny_params(evaluate={"hms_scales": [[0.5, 1.0, 2.0, 4.0]]}))


def test_control_sees_as_many_images_as_experts_and_fine_tuning():
    params = validate(tiny_params(train={"steps": 10, "batch_size": 4},
                                  finetune={"steps": 5, "batch_size": 3}))
    # 3 experts x 10 steps x 4 + 5 steps x 3 x 2 pairs (0.5-1.0, 1.0-2.0) = 150 images -> 38 steps of 4.
    assert pipeline_images(params) == 150 and control_steps(params) == 38
    shared = validate(tiny_params(scales=[1.0], hms={"mode": "shared", "shared_pairs": [[0.5, 1.0]]},
                                  train={"steps": 10, "batch_size": 4}, finetune={"steps": 5, "batch_size": 4}))
    assert pipeline_images(shared) == 60 and control_steps(shared) == 15


def test_rows_put_average_pooling_beside_each_chain_and_name_the_weights():
    rows = row_specs([0.5, 1.0, 2.0], [[0.5, 1.0], [0.25, 0.5, 1.0, 2.0], [0.5, 1.0, 2.0]])
    assert rows["avg_0.5-1.0"] == Row("avg", (0.5, 1.0))
    assert rows["avg_0.25-0.5-1.0-2.0"] == Row("avg", (0.25, 0.5, 1.0, 2.0))
    assert "avg_0.5-1.0-2.0" not in rows  # that is "avg", over every scale
    # TTA runs the headline (last) chain's scales, through the HMS model's own scale-1.0 branch.
    assert [n for n in rows if n.startswith("tta")] == ["tta_0.5-1.0-2.0", "tta_flip_0.5-1.0-2.0"]
    assert method_label("tta_0.5-1.0-2.0") == "HMS model's scale-1.0 branch at 0.5, 1.0, 2.0 (TTA)"
    control = control_specs([[0.5, 1.0], [0.5, 1.0, 2.0]])
    assert control == {"control_1.0": Row("single", (1.0,)), "control_tta_0.5-1.0-2.0": Row("tta", (0.5, 1.0, 2.0)),
                       "control_tta_flip_0.5-1.0-2.0": Row("tta", (0.5, 1.0, 2.0), True)}
    assert method_label("control_tta_flip_0.5-1.0-2.0") == "equal-budget scale-1.0 network at 0.5, 1.0, 2.0 + flip (TTA)"


def test_the_control_runs_as_one_network_at_every_scale(tmp_path, tiny_meta):
    net = build_seg_model(tiny_meta).eval()
    path = tmp_path / "model.pt"
    save_checkpoint(path, {"meta": {**tiny_meta, "scale": 1.0, "images": 26}, "state_dict": net.state_dict()})
    control = single_network(path, [0.5, 1.0, 2.0]).eval()
    assert control.mode == "shared" and control.meta["images"] == 26
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for s in (0.5, 1.0, 2.0):
            size = (round(32 * s), round(32 * s))
            assert torch.equal(control.scale_forward(image, s, attention=False)[0], net(resize_image(image, size)))


def test_a_warm_start_loads_the_source_experts_weights_and_refuses_another_architecture(tmp_path, tiny_meta):
    source = build_seg_model(tiny_meta)
    path = tmp_path / "model.pt"
    save_checkpoint(path, {"meta": {**tiny_meta, "scale": 1.0, "images": 26}, "state_dict": source.state_dict()})
    fresh = build_seg_model(tiny_meta)   # another random initialisation
    load_expert(fresh, path, tiny_meta)
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in fresh.state_dict().items())
    wider = {**tiny_meta, "head_channels": 2 * tiny_meta["head_channels"]}
    with pytest.raises(ValueError, match="model.pt: an expert of"):
        load_expert(build_seg_model(wider), path, wider)
