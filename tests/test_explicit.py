"""The explicit-attention baseline (Chen et al. 2016)."""
import torch
from test_hms import _experts

from hms_core.data.resize import resize
from hms_core.models.explicit import EXPLICIT, ExplicitAttention, explicit_loss
from hms_core.models.transplant import transplant


def test_explicit_fusion_is_a_softmax_weighted_sum(tiny_meta):
    model = ExplicitAttention({**tiny_meta, "mode": "experts", "scales": [0.5, 1.0, 2.0]}).eval()
    image = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        fused, logits, weights = model.explicit_forward(image)
    assert fused.shape == (2, 5, 32, 48) and weights.shape == (2, 3, 32, 48)
    assert torch.allclose(weights.sum(1), torch.ones(2, 32, 48), atol=1e-5)
    expected = sum(weights[:, i:i + 1] * resize(logits[s], (32, 48)) for i, s in enumerate([0.5, 1.0, 2.0]))
    assert torch.allclose(fused, expected, atol=1e-6)
    assert logits[2.0].shape[-2:] == (64, 96) and logits[0.5].shape[-2:] == (16, 24)


def test_explicit_head_reads_all_scales_and_trains_alone(tmp_path, tiny_meta):
    paths = _experts(tmp_path, tiny_meta, [0.5, 1.0, 2.0])
    model, _ = transplant({**tiny_meta, "mode": "experts", "scales": [0.5, 1.0, 2.0]}, paths,
                          model_cls=ExplicitAttention)
    first_conv = model.attention[EXPLICIT].net[0][0]
    assert first_conv.in_channels == 3 * tiny_meta["head_channels"]
    model.freeze_branches(True)
    model.train()
    image, target = torch.randn(2, 3, 32, 32), torch.randint(0, 5, (2, 32, 32))
    fused, logits, _ = model.explicit_forward(image)
    explicit_loss(fused, logits, target, 0.05).backward()
    assert first_conv.weight.grad is not None
    assert all(p.grad is None for p in model.branches.parameters())
