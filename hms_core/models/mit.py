"""SegFormer's Mix Transformer trunk (MiT-B0) and all-MLP decoder (Xie et al. 2021, arXiv:2105.15203).

Both are HuggingFace ``transformers`` Segformer modules built from a config,
never downloaded (no ``from_pretrained``):

* :class:`MitTrunk` (``trunk: mit_b0``): ``SegformerModel``, four transformer
  stages at strides 4, 8, 16 and 32. It returns ``stage1`` .. ``stage4`` and,
  like every trunk, ``low`` (stage 1, stride 4) and ``out`` (stage 4, stride 32:
  MiT has no dilated variant, so its output stride is fixed).
* :class:`SegformerHead` (``head: segformer``): ``SegformerDecodeHead`` without
  its classifier: ``f = dropout(relu(bn(conv1x1([up(linear_i(stage_i))]_{i=4..1}))))``,
  ``model.head_channels`` wide, at stride 4. The 1x1 class classifier is
  :class:`hms_core.models.segmodel.SegModel`'s, so the HMS attention head reads these
  same features, as with the DeepLab heads.

transformers 5 renamed the Segformer modules (``encoder.block.0.0.attention.self.query``
became ``stages.0.blocks.0.attention.q_proj``; ``decode_head.linear_c`` became
``linear_projections``). Both modules rename the keys of a state dict written
under the other layout when it is loaded, so checkpoints and pretrained files
load under transformers 4.40+ and 5.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Collection, Sequence

import torch
from torch import nn

from hms_core.models.weights import PRETRAINED_IMAGENET, PRETRAINED_NONE, load_checked, read_state_dict

MIT_TRUNKS = ("mit_b0",)  # built here from HuggingFace transformers' Segformer classes

MIT_OUTPUT_STRIDE = 32
# Per-size widths of the Mix Transformer (SegFormer's mix_transformer.py, mit_b0).
MIT_SIZES = {
    "mit_b0": {"hidden_sizes": [32, 64, 160, 256], "depths": [2, 2, 2, 2], "num_attention_heads": [1, 2, 5, 8],
               "sr_ratios": [8, 4, 2, 1]},
}
# What every MiT size shares. Spelt out rather than taken from SegformerConfig's
# defaults, so that a new transformers release cannot change the model.
_MIT_COMMON = {"num_channels": 3, "num_encoder_blocks": 4, "patch_sizes": [7, 3, 3, 3], "strides": [4, 2, 2, 2],
               "mlp_ratios": [4, 4, 4, 4], "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
               "attention_probs_dropout_prob": 0.0, "classifier_dropout_prob": 0.1, "drop_path_rate": 0.1,
               "initializer_range": 0.02, "reshape_last_stage": True}
# Keys of a HuggingFace Segformer state dict that are not the trunk's: the ImageNet
# classifier (SegformerForImageClassification) and the decoder (SegformerForSemanticSegmentation).
_NOT_TRUNK = ("classifier.", "decode_head.")
_HF_PREFIX = "segformer."

# (transformers 4 name, transformers 5 name) of the Segformer modules; "{i}" is a stage index.
# Names starting with "." are inner module names, the others the start of a key.
_RENAMES = (
    ("encoder.patch_embeddings.{i}.", "stages.{i}.patch_embeddings."),
    ("encoder.block.{i}.", "stages.{i}.blocks."),
    ("encoder.layer_norm.{i}.", "stages.{i}.layer_norm."),
    (".attention.self.query.", ".attention.q_proj."),
    (".attention.self.key.", ".attention.k_proj."),
    (".attention.self.value.", ".attention.v_proj."),
    (".attention.self.sr.", ".attention.sequence_reduction.sequence_reduction."),
    (".attention.self.layer_norm.", ".attention.sequence_reduction.layer_norm."),
    (".attention.output.dense.", ".attention.o_proj."),
    (".mlp.dense1.", ".mlp.fc1."),
    (".mlp.dense2.", ".mlp.fc2."),
    (".layer_norm_1.", ".layernorm_before."),
    (".layer_norm_2.", ".layernorm_after."),
    ("linear_c.{i}.", "linear_projections.{i}."),
)


def _segformer() -> Any:
    """transformers' Segformer module, imported on first use (it takes seconds, and only MiT needs it)."""
    try:
        from transformers.models.segformer import modeling_segformer
    except ImportError as exc:
        raise ImportError(f"trunk: mit_b0 needs the transformers package (>= 4.40), which does not import "
                          f"({exc}); pip install -r requirements.txt") from None
    return modeling_segformer


def segformer_config(hidden_sizes: Sequence[int], decoder_hidden_size: int = 256, **sizes: Any) -> Any:
    """A ``SegformerConfig`` with MiT's common settings, the stage widths and the decoder width.

    ``output_hidden_states`` is on: the trunk returns every stage.
    """
    return _segformer().SegformerConfig(**_MIT_COMMON, **sizes, hidden_sizes=list(hidden_sizes),
                                        decoder_hidden_size=decoder_hidden_size, output_hidden_states=True)


def _rename(key: str, to_new: bool) -> str:
    """``key`` in the transformers 5 layout (``to_new``) or the transformers 4 one."""
    for old, new in _RENAMES:
        src, dst = (old, new) if to_new else (new, old)
        if src.startswith("."):
            key = key.replace(src, dst)
        else:
            pattern = "^" + r"(\d+)".join(map(re.escape, src.split("{i}")))
            key = re.sub(pattern, dst.replace("{i}", r"\1"), key)
    return key


def _in_layout(key: str, own: Collection[str]) -> str:
    """``key`` renamed to the layout of ``own`` (the keys of the module at hand) when it is in the other one."""
    for candidate in (key, _rename(key, to_new=True), _rename(key, to_new=False)):
        if candidate in own:
            return candidate
    return key


def _load_any_layout(module: nn.Module) -> None:
    """Let ``module`` load state dicts saved under either transformers layout (a load pre-hook)."""
    own = frozenset(module.state_dict())

    def hook(mod: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
        for key in [k for k in state_dict if k.startswith(prefix) and k[len(prefix):] not in own]:
            renamed = prefix + _in_layout(key[len(prefix):], own)
            if renamed != key and renamed not in state_dict:
                state_dict[renamed] = state_dict.pop(key)

    # The public register_load_state_dict_pre_hook is torch 2.5+; this is what it calls (torch 1.10+).
    module._register_load_state_dict_pre_hook(hook, with_module=True)


class MitTrunk(nn.Module):
    """A Mix Transformer: ``{stage1..stage4, low, out}`` feature maps [B, C_i, H / 2^(i+1), W / 2^(i+1)]."""

    def __init__(self, name: str = "mit_b0", pretrained: str = PRETRAINED_NONE) -> None:
        super().__init__()
        if name not in MIT_SIZES:
            raise ValueError(f"trunk: unknown MiT trunk {name!r}; expected one of {', '.join(MIT_TRUNKS)}")
        config = segformer_config(**MIT_SIZES[name])
        self.body = _segformer().SegformerModel(config)
        # torch.jit.trace (export) reads every attribute; transformers 5's loss_function property
        # warns on a model without a known loss type, as a bare encoder is. The loss is never used.
        self.body.loss_type = "ForSemanticSegmentation"
        _load_any_layout(self.body)
        self.stage_channels = tuple(config.hidden_sizes)
        self.low_channels, self.out_channels = self.stage_channels[0], self.stage_channels[-1]
        self.output_stride = MIT_OUTPUT_STRIDE
        if pretrained != PRETRAINED_NONE:
            load_mit_pretrained(self.body, name, pretrained)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        stages = self.body(x).hidden_states  # every stage, reshaped to [B, C, h, w]
        return {**{f"stage{i + 1}": s for i, s in enumerate(stages)}, "low": stages[0], "out": stages[-1]}


class SegformerHead(nn.Module):
    """SegFormer's all-MLP decoder on the four MiT stages, returning ``channels`` features at stride 4."""

    def __init__(self, stage_channels: Sequence[int], channels: int) -> None:
        super().__init__()
        self.decoder = _segformer().SegformerDecodeHead(segformer_config(stage_channels, channels))
        # SegModel holds the class classifier, after the features the attention head reads too.
        self.decoder.classifier = nn.Identity()
        _load_any_layout(self.decoder)
        self.channels = channels

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.decoder([features[f"stage{i}"] for i in range(1, 5)])


def load_mit_pretrained(body: nn.Module, name: str, pretrained: str) -> None:
    """Load a local state dict of a HuggingFace Segformer model into ``body`` (a ``SegformerModel``).

    The file may hold a ``SegformerModel``, ``SegformerForImageClassification``
    (ImageNet MiT, ``nvidia/mit-b0``) or ``SegformerForSemanticSegmentation``
    state dict, from transformers 4 or 5; only the encoder is loaded. There is no
    local ImageNet file for MiT (torchvision has none), so ``imagenet`` is an error.
    """
    if pretrained == PRETRAINED_IMAGENET:
        raise ValueError(
            f"pretrained: imagenet has no local file for {name} (torchvision has no MiT weights, and nothing is "
            f"downloaded); give a path to a saved state dict of HuggingFace's MiT, e.g. "
            f"torch.save(SegformerForImageClassification.from_pretrained('nvidia/mit-b0').state_dict(), path) "
            f"on a machine with internet access, or use 'none'")
    path = Path(pretrained)
    state = {k.removeprefix(_HF_PREFIX): v for k, v in read_state_dict(path).items() if not k.startswith(_NOT_TRUNK)}
    own = frozenset(body.state_dict())
    # Keys renamed to body's transformers layout; keys that fit neither layout are kept (load_checked names them).
    load_checked(body, {_in_layout(k, own): v for k, v in state.items()}, name, path)
