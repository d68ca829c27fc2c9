"""Pretrained trunks: a torchvision classification state dict lands in the trunk tensor for tensor."""
import pytest
import torch
import torchvision

from hms_core.models.trunks import build_trunk


def _source(tmp_path, name):
    """A randomly initialised torchvision classifier saved as a plain state dict."""
    torch.manual_seed(1)
    net = getattr(torchvision.models, name)(weights=None)
    path = tmp_path / f"{name}.pt"
    torch.save(net.state_dict(), path)
    return path, net.state_dict()


@pytest.mark.parametrize("name, prefix, output_stride", [
    ("mobilenet_v3_large", "features.", 16),
    ("resnet50", "", 8),
])
def test_trunk_takes_every_tensor_of_the_state_dict(tmp_path, name, prefix, output_stride):
    path, source = _source(tmp_path, name)
    trunk = build_trunk(name, output_stride, str(path))
    state = trunk.state_dict()
    assert state
    for key, tensor in state.items():
        # body.* is the classifier net (ResNet) or its features (MobileNetV3) cut after the last stage.
        src = source[prefix + key[len("body."):]]
        assert torch.equal(tensor, src), key
    # The trunk is the whole classifier but its head: the source keys it does not hold are the head's.
    held = {prefix + k[len("body."):] for k in state}
    left = {k for k in source if k not in held}
    assert left and all(k.startswith(("fc.", "classifier.", "avgpool.")) for k in left), sorted(left)[:5]


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"pretrained: no state dict file at .*nothing\.pt"):
        build_trunk("mobilenet_v3_large", 16, str(tmp_path / "nothing.pt"))


def test_imagenet_without_local_cache_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    with pytest.raises(FileNotFoundError) as info:
        build_trunk("mobilenet_v3_large", 16, "imagenet")
    message = str(info.value)
    assert "not in the local torch cache" in message
    assert str(tmp_path / "empty_torch_home" / "hub" / "checkpoints") in message
    assert "mobilenet_v3_large-" in message and "\n" not in message


def test_other_architecture_is_rejected_in_one_line(tmp_path):
    path, _ = _source(tmp_path, "resnet50")
    with pytest.raises(ValueError, match=r"resnet50\.pt does not fit mobilenet_v3_large") as info:
        build_trunk("mobilenet_v3_large", 16, str(path))
    assert "\n" not in str(info.value)


def test_same_keys_other_shapes_are_rejected_in_one_line(tmp_path):
    # mobilenet_v3_small shares most key names with the large model, with other widths.
    path, _ = _source(tmp_path, "mobilenet_v3_small")
    with pytest.raises(ValueError, match=r"mobilenet_v3_small\.pt does not fit mobilenet_v3_large") as info:
        build_trunk("mobilenet_v3_large", 16, str(path))
    assert "\n" not in str(info.value)
    # One tensor of a wrong shape among otherwise fitting ones is named.
    state = torchvision.models.mobilenet_v3_large(weights=None).state_dict()
    state["features.1.block.0.0.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(state, tmp_path / "bad_shape.pt")
    with pytest.raises(ValueError, match=r"features\.1\.block\.0\.0\.weight") as info:
        build_trunk("mobilenet_v3_large", 16, str(tmp_path / "bad_shape.pt"))
    assert "\n" not in str(info.value)


def test_unreadable_file_is_rejected_in_one_line(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a state dict")
    with pytest.raises(ValueError, match=r"garbage\.pt") as info:
        build_trunk("mobilenet_v3_large", 16, str(path))
    assert "\n" not in str(info.value)
