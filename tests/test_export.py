"""Export: the TorchScript model computes what the eager HMS model computes."""
import pytest
import torch

from hms_core.io import save_checkpoint
from hms_core.models.hms import HMS
from hms_core.tools.export import load
from hms_core.tools.main import main

SCALES = [0.5, 1.0, 2.0]


def _model(tmp_path, meta, mode):
    """A randomly initialised HMS model saved like the finetune stage saves it."""
    torch.manual_seed(0)
    meta = {**meta, "mode": mode, "scales": SCALES}
    model = HMS(meta)
    # Non-trivial BatchNorm statistics, so that eval-mode normalisation is exercised too.
    for name, buffer in model.named_buffers():
        if name.endswith(("running_mean", "running_var")):
            buffer.copy_(torch.rand_like(buffer) + (0.5 if name.endswith("var") else -0.5))
    path = tmp_path / f"hms_{mode}.pt"
    save_checkpoint(path, {"meta": meta, "state_dict": model.state_dict()})
    return path, model.eval()


@pytest.mark.parametrize("mode", ["experts", "shared"])
def test_exported_model_equals_eager(tmp_path, tiny_meta, mode):
    path, eager = _model(tmp_path, tiny_meta, mode)
    out = tmp_path / "export" / "model.ts"
    assert main(["export", "--model", str(path), "--scales", "0.5", "1.0", "2.0", "--height", "40", "--width", "56",
                 "--out", str(out)]) == 0
    exported, meta = load(out)
    assert meta["scales"] == SCALES and (meta["height"], meta["width"]) == (40, 56)
    assert meta["grouping"] == "category" and meta["mean"] == pytest.approx([0.485, 0.456, 0.406])
    image = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        expected = eager(image, SCALES)
        got = exported(image)
    assert got.shape == (1, 5, 40, 56)
    assert torch.allclose(got, expected, atol=1e-5)
    batch = torch.randn(2, 3, 40, 56)  # the batch size is not fixed by tracing
    with torch.no_grad():
        assert torch.allclose(exported(batch), eager(batch, SCALES), atol=1e-5)
    assert not list(tmp_path.joinpath("export").glob("*.tmp"))  # written atomically, nothing left over


def test_export_errors_are_one_line(tmp_path, tiny_meta, capsys):
    path, _ = _model(tmp_path, tiny_meta, "experts")
    assert main(["export", "--model", str(tmp_path / "none.pt"), "--height", "8", "--width", "8",
                 "--out", str(tmp_path / "m.ts")]) == 1
    assert "none.pt: checkpoint not found" in capsys.readouterr().err
    assert main(["export", "--model", str(path), "--scales", "0.5", "--height", "8", "--width", "8",
                 "--out", str(tmp_path / "m.ts")]) == 1
    assert "must contain 1.0" in capsys.readouterr().err
    assert not (tmp_path / "m.ts").exists()
