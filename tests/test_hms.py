"""HMS fusion, the N-scale chain, two-scale training, transplant."""
import pytest
import torch
from conftest import tiny_params

from hms_core.config import validate
from hms_core.data.resize import resize, resize_image
from hms_core.io import save_checkpoint
from hms_core.models.hms import HMS, fuse_lower, hierarchical_fusion, hms_pair_loss, scale_key
from hms_core.models.segmodel import build_seg_model
from hms_core.models.transplant import TransplantError, transplant
from hms_core.train.jobs import finetune_pairs


def test_fuse_lower_matches_hand_computation():
    # p_lo and a_lo at 1x1, upsampled to 2x2 (bilinear of a constant is the constant).
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    p_lo, a_lo = torch.tensor([[[[10.0]]]]), torch.tensor([[[[0.25]]]])
    # up(a * p) + (1 - up(a)) * pred = 2.5 + 0.75 * pred
    expected = torch.tensor([[[[3.25, 4.0], [4.75, 5.5]]]])
    assert torch.allclose(fuse_lower(pred, p_lo, a_lo), expected)


def test_fuse_lower_takes_product_at_low_resolution():
    pred = torch.zeros(1, 1, 4, 4)
    p_lo, a_lo = torch.tensor([[[[0.0, 8.0], [0.0, 8.0]]]]), torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    # a * p is zero everywhere, so up(a * p) is zero; up(a) * up(p) would not be.
    assert torch.allclose(fuse_lower(pred, p_lo, a_lo), torch.zeros(1, 1, 4, 4))


def test_chain_order_high_to_low():
    size = {0.5: 2, 1.0: 4, 2.0: 8}
    p = {s: torch.full((1, 1, n, n), float(i + 1)) for i, (s, n) in enumerate(size.items())}  # 1, 2, 3
    a = {s: torch.full((1, 1, n, n), 0.5) for s, n in size.items()}
    out = hierarchical_fusion({s: (p[s], a[s]) for s in size})
    # pred = p_2 = 3; scale 1: 0.5 * 2 + 0.5 * 3 = 2.5; scale 0.5: 0.5 * 1 + 0.5 * 2.5 = 1.75
    assert out.shape == (1, 1, 4, 4)
    assert torch.allclose(out, torch.full((1, 1, 4, 4), 1.75))
    # The top scale's attention is never read.
    a[2.0] = torch.full((1, 1, 8, 8), 0.9)
    assert torch.allclose(hierarchical_fusion({s: (p[s], a[s]) for s in size}), out)


def test_chain_requires_scale_one():
    with pytest.raises(ValueError, match="1.0"):
        hierarchical_fusion({0.5: (torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)),
                             2.0: (torch.zeros(1, 1, 8, 8), None)})


def _experts(tmp_path, meta, scales):
    paths = {}
    for s in scales:
        model = build_seg_model(meta)
        paths[s] = tmp_path / f"scale_{s}.pt"
        save_checkpoint(paths[s], {"meta": {**meta, "scale": s}, "state_dict": model.state_dict()})
    return paths


@pytest.mark.parametrize("mode", ["experts", "shared"])
def test_hms_at_single_scale_reproduces_expert_logits(tmp_path, tiny_meta, mode):
    scales = [0.5, 1.0, 2.0]
    paths = _experts(tmp_path, tiny_meta, scales)
    hms, report = transplant({**tiny_meta, "mode": mode, "scales": scales}, paths, shared_source_scale=1.0)
    assert "tensors copied" in report[0]
    hms.eval()
    image = torch.randn(1, 3, 40, 56)
    for s in scales:
        source_scale = s if mode == "experts" else 1.0
        expert = build_seg_model(tiny_meta)
        expert.load_state_dict(torch.load(paths[source_scale], weights_only=True)["state_dict"])
        expert.eval()
        with torch.no_grad():
            expected = expert(resize_image(image, (round(40 * s), round(56 * s))))
            got, _ = hms.scale_forward(image, s)
        assert torch.equal(got, expected)


def test_attention_on_the_decoder_concatenation_keeps_the_experts_logits(tmp_path, tiny_meta):
    """``concat``: the attention head reads [up(ASPP), proj48(low)] (16 + 48 channels here) instead of the
    decoder's output; the experts' weights and logits are the same, only the attention head is wider."""
    paths = _experts(tmp_path, tiny_meta, [0.5, 1.0])
    plain, _ = transplant({**tiny_meta, "mode": "experts", "scales": [0.5, 1.0]}, paths)
    concat, _ = transplant({**tiny_meta, "mode": "experts", "scales": [0.5, 1.0], "attention_features": "concat"},
                           paths)
    head = concat.attention["s0_5"].net[0][0]
    assert head.in_channels == 16 + 48 and plain.attention["s0_5"].net[0][0].in_channels == 16
    image = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        p_plain, a_plain = plain.eval().scale_forward(image, 0.5)
        p_concat, a_concat = concat.eval().scale_forward(image, 0.5)
    assert torch.equal(p_plain, p_concat) and a_concat.shape == a_plain.shape == (1, 1, 20, 28)
    assert 0 < a_concat.min() and a_concat.max() < 1
    concat.train()
    joint, *_ = concat.pair_forward(torch.randn(2, 3, 32, 32), 0.5, 1.0)
    joint.sum().backward()   # the gradient reaches the head through the concatenation it reads
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


def test_transplant_names_mismatching_checkpoint(tmp_path, tiny_meta):
    paths = _experts(tmp_path, tiny_meta, [0.5, 1.0])
    other = {**tiny_meta, "num_classes": 7}
    paths[1.0] = _experts(tmp_path / "other", other, [1.0])[1.0]
    with pytest.raises(TransplantError, match=r"scale_1.0.pt: num_classes is 7, expected 5"):
        transplant({**tiny_meta, "mode": "experts", "scales": [0.5, 1.0]}, paths)


def test_pair_forward_is_the_two_scale_fusion(tiny_meta):
    hms = HMS({**tiny_meta, "mode": "experts", "scales": [0.5, 1.0]}).eval()
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        joint, p_lo, p_hi, a_lo = hms.pair_forward(image, 0.5, 1.0)
        assert torch.allclose(joint, resize(a_lo * p_lo, (32, 32)) + (1 - resize(a_lo, (32, 32))) * p_hi)
        assert torch.allclose(joint, hms(image, [0.5, 1.0]), atol=1e-6)


def test_finetune_trains_attention_only_when_frozen(tiny_meta):
    hms = HMS({**tiny_meta, "mode": "experts", "scales": [0.5, 1.0, 2.0]})
    hms.freeze_branches(True)
    hms.train()
    assert not hms.branches.training  # frozen BatchNorm statistics
    image, target = torch.randn(2, 3, 32, 32), torch.randint(0, 5, (2, 32, 32))
    target[0, :4] = 255
    joint, p_lo, p_hi, _ = hms.pair_forward(image, 1.0, 2.0)
    hms_pair_loss(joint, p_lo, p_hi, target, 0.05).backward()
    assert hms.attention[scale_key(1.0)].net[0][0].weight.grad is not None
    assert hms.attention[scale_key(0.5)].net[0][0].weight.grad is None
    assert all(p.grad is None for p in hms.branches.parameters())


def test_experts_mode_rejects_unseen_scale(tiny_meta):
    hms = HMS({**tiny_meta, "mode": "experts", "scales": [0.5, 1.0]}).eval()
    with pytest.raises(ValueError, match="no expert"):
        hms.scale_forward(torch.randn(1, 3, 16, 16), 0.75)


def test_finetune_pairs_shared_mode_lists_hms_shared_pairs_experts_mode_adjacent_scales():
    params = validate(tiny_params(scales=[1.0], hms={"mode": "shared", "shared_pairs": [[0.5, 1.0], [1.0, 2.0]]}))
    assert finetune_pairs(params) == [(0.5, 1.0), (1.0, 2.0)]
    params = validate(tiny_params(scales=[0.5, 1.0, 2.0], hms={"mode": "experts"}))
    assert finetune_pairs(params) == [(0.5, 1.0), (1.0, 2.0)]  # experts: adjacent scales, shared_pairs unused
