"""MobileNetV3 audio taggers (EfficientAT's ``mn01`` .. ``mn40``).

Input ``[B, 1, 128, T]`` log-mel, output ``(logits [B, classes], embedding [B, D])``. The
architecture is the MobileNetV3-Large table below, scaled by a width multiplier, with a
single-channel 3x3 stem and the 'mlp' head. Module names match the published checkpoints:
``features.0`` stem, ``features.1`` .. ``features.15`` blocks, ``features.16`` the last 1x1
conv, ``classifier.2``/``classifier.5`` the two FC layers.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from soundwatch.models.blocks import (
    Activation,
    BlockConfig,
    InvertedResidual,
    conv_bn_act,
    head_forward,
    init_weights,
    mlp_head,
    scaled_channels,
)


class BlockRow(NamedTuple):
    """One row of an architecture table, in width-1.0 channels (input = previous output)."""

    kernel: int
    expanded: int
    out: int
    use_se: bool
    activation: Activation
    stride: int


STEM_CHANNELS = 16
"""Output channels of the 3x3 stride-2 stem (width 1.0)."""

# MobileNetV3-Large (Howard et al. 2019, table 1). Strides of 2 halve both frequency and time;
# with the stem that is 32x down-sampling: 128 mel bins -> 4, 100 frames (1 s) -> 4.
MOBILENET_V3_BLOCKS: tuple[BlockRow, ...] = (
    #        k  exp  out   SE     act  stride
    BlockRow(3, 16, 16, False, "RE", 1),
    BlockRow(3, 64, 24, False, "RE", 2),
    BlockRow(3, 72, 24, False, "RE", 1),
    BlockRow(5, 72, 40, True, "RE", 2),
    BlockRow(5, 120, 40, True, "RE", 1),
    BlockRow(5, 120, 40, True, "RE", 1),
    BlockRow(3, 240, 80, False, "HS", 2),
    BlockRow(3, 200, 80, False, "HS", 1),
    BlockRow(3, 184, 80, False, "HS", 1),
    BlockRow(3, 184, 80, False, "HS", 1),
    BlockRow(3, 480, 112, True, "HS", 1),
    BlockRow(3, 672, 112, True, "HS", 1),
    BlockRow(5, 672, 160, True, "HS", 2),
    BlockRow(5, 960, 160, True, "HS", 1),
    BlockRow(5, 960, 160, True, "HS", 1),
)

LAST_CONV_EXPANSION = 6
"""The final 1x1 conv widens the last block's output six-fold (960 channels at width 1.0)."""

HEAD_HIDDEN = 1280
"""Hidden width of the 'mlp' head at width 1.0."""


def scaled_blocks(rows: tuple[BlockRow, ...], width_mult: float) -> list[BlockConfig]:
    """Scale a width-1.0 table to ``width_mult``, chaining each block's input channels."""
    configs: list[BlockConfig] = []
    in_channels = scaled_channels(STEM_CHANNELS, width_mult)
    for row in rows:
        cfg = BlockConfig(
            in_channels=in_channels,
            kernel=row.kernel,
            expanded_channels=scaled_channels(row.expanded, width_mult),
            out_channels=scaled_channels(row.out, width_mult),
            use_se=row.use_se,
            activation=row.activation,
            stride=row.stride,
        )
        configs.append(cfg)
        in_channels = cfg.out_channels
    return configs


class MobileNetV3(nn.Module):
    """MobileNetV3 tagger; ``forward`` returns ``(logits, embedding)``."""

    def __init__(self, width_mult: float, num_classes: int = 527, dropout: float = 0.2) -> None:
        super().__init__()
        blocks = scaled_blocks(MOBILENET_V3_BLOCKS, width_mult)
        last_in = blocks[-1].out_channels
        self.embedding_dim = LAST_CONV_EXPANSION * last_in
        self.features = nn.Sequential(
            conv_bn_act(1, blocks[0].in_channels, 3, stride=2, activation="HS"),
            *(InvertedResidual(cfg) for cfg in blocks),
            conv_bn_act(last_in, self.embedding_dim, 1, activation="HS"),
        )
        hidden = scaled_channels(HEAD_HIDDEN, width_mult)
        self.classifier = mlp_head(self.embedding_dim, hidden, num_classes, dropout)
        init_weights(self)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return head_forward(self.classifier, self.features(x))
