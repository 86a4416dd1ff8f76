"""Building blocks shared by the MobileNetV3 (``mn``) and dynamic MobileNet (``dymn``) taggers.

Module attribute names follow the published EfficientAT checkpoints, so that their state
dicts load strictly: a conv-norm-activation unit is an ``nn.Sequential`` indexed ``0`` (conv),
``1`` (batch norm), ``2`` (activation), a squeeze-excitation unit keeps its weights under
``conc_se_layers.0.fc1``/``fc2``, an inverted residual keeps its layers under ``block``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

Activation = Literal["RE", "HS"]
"""``RE``: ReLU, ``HS``: hard swish (the MobileNetV3 paper's abbreviations)."""

BN_EPS = 0.001
BN_MOMENTUM = 0.01


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to the nearest multiple of ``divisor`` (at least ``divisor``).

    Never rounds down by more than 10 %, as in the MobileNet papers' channel rule.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def scaled_channels(channels: int, width_mult: float) -> int:
    """Channel count of a width-1.0 layer in a network scaled by ``width_mult``."""
    return make_divisible(channels * width_mult, 8)


def batch_norm(channels: int) -> nn.BatchNorm2d:
    """The batch norm used everywhere in these networks (eps 1e-3, momentum 0.01)."""
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def activation_layer(kind: Activation | None) -> nn.Module | None:
    """A fresh activation module for ``kind`` (``None``: no activation)."""
    if kind is None:
        return None
    if kind == "RE":
        return nn.ReLU(inplace=True)
    if kind == "HS":
        return nn.Hardswish(inplace=True)
    raise ValueError(f"unknown activation {kind!r}; expected 'RE' or 'HS'")


def conv_bn_act(
    in_channels: int,
    out_channels: int,
    kernel: int,
    *,
    stride: int = 1,
    groups: int = 1,
    activation: Activation | None,
) -> nn.Sequential:
    """Conv (no bias, 'same' padding for odd kernels) -> batch norm -> optional activation."""
    layers: list[nn.Module] = [
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size=kernel,
            stride=stride,
            padding=(kernel - 1) // 2,
            groups=groups,
            bias=False,
        ),
        batch_norm(out_channels),
    ]
    act = activation_layer(activation)
    if act is not None:
        layers.append(act)
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class BlockConfig:
    """One inverted residual block, with channel counts already scaled to the network width."""

    in_channels: int
    kernel: int
    expanded_channels: int
    out_channels: int
    use_se: bool
    activation: Activation
    stride: int

    @property
    def has_expansion(self) -> bool:
        """Blocks whose expansion would not change the width skip the 1x1 expansion conv."""
        return self.expanded_channels != self.in_channels

    @property
    def has_residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels


class ChannelSqueezeExcitation(nn.Module):
    """Squeeze-excitation over channels: mean over (freq, time) -> FC -> ReLU -> FC -> sigmoid.

    EfficientAT allows several concurrent squeeze-excitations (over channels, frequency
    and/or time, fused by a max); its published models use the channel one only, which is
    all this module implements. ``conc_se_layers`` keeps the checkpoint's parameter names.
    """

    def __init__(self, channels: int, squeeze_ratio: int = 4) -> None:
        super().__init__()
        squeezed = make_divisible(channels // squeeze_ratio, 8)
        self.conc_se_layers = nn.ModuleList([_SqueezeFC(channels, squeezed)])

    def forward(self, x: Tensor) -> Tensor:
        fc = self.conc_se_layers[0]
        scale = x.mean(dim=(2, 3))
        scale = torch.sigmoid(fc.fc2(torch.relu(fc.fc1(scale))))
        return x * scale[:, :, None, None]


class _SqueezeFC(nn.Module):
    """The two fully connected layers of one squeeze-excitation (weights only)."""

    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, squeezed)
        self.fc2 = nn.Linear(squeezed, channels)


class InvertedResidual(nn.Module):
    """MobileNetV3 block: 1x1 expand -> depthwise k x k -> [squeeze-excite] -> 1x1 project."""

    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        if cfg.stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {cfg.stride}")
        self.use_residual = cfg.has_residual
        layers: list[nn.Module] = []
        if cfg.has_expansion:
            layers.append(
                conv_bn_act(cfg.in_channels, cfg.expanded_channels, 1, activation=cfg.activation)
            )
        layers.append(
            conv_bn_act(
                cfg.expanded_channels,
                cfg.expanded_channels,
                cfg.kernel,
                stride=cfg.stride,
                groups=cfg.expanded_channels,
                activation=cfg.activation,
            )
        )
        if cfg.use_se:
            layers.append(ChannelSqueezeExcitation(cfg.expanded_channels))
        layers.append(conv_bn_act(cfg.expanded_channels, cfg.out_channels, 1, activation=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        if self.use_residual:
            out = out + x
        return out


def mlp_head(
    in_channels: int, hidden: int, num_classes: int, dropout: float = 0.2
) -> nn.Sequential:
    """The 'mlp' classifier: pool -> flatten -> FC -> hard swish -> dropout -> FC.

    Indices 0 and 1 (pooling) produce the embedding; :func:`head_forward` splits it there.
    """
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(start_dim=1),
        nn.Linear(in_channels, hidden),
        nn.Hardswish(inplace=True),
        nn.Dropout(p=dropout),
        nn.Linear(hidden, num_classes),
    )


def head_forward(classifier: nn.Sequential, features: Tensor) -> tuple[Tensor, Tensor]:
    """Run an :func:`mlp_head` on a feature map; return ``(logits, embedding)``.

    The embedding is the pooled feature vector the classifier's first FC layer reads.
    """
    embedding = features.mean(dim=(2, 3))
    x = embedding
    for layer in list(classifier)[2:]:
        x = layer(x)
    return x, embedding


def init_weights(model: nn.Module) -> None:
    """Random initialisation as in the reference (for training from scratch / benchmarks)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, 0.01)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
