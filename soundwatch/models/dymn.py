"""Dynamic MobileNets (EfficientAT's ``dymn04``, ``dymn10``, ``dymn20``; Schmid et al. 2024).

Same block table as :mod:`soundwatch.models.mobilenet`, but every block is dynamic: a small
context network summarises the block input along frequency and time, and that context
(1) mixes ``k`` = 4 kernels per convolution into one kernel per example (dynamic conv),
(2) sets per-channel piecewise-linear activations (dynamic ReLU, variant B) and
(3) re-weights the depthwise output per frequency band and per time step (coordinate
attention). Module and parameter names match the published checkpoints: ``in_c``,
``layers.0`` .. ``layers.14``, ``out_c``, ``classifier``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from soundwatch.models.blocks import (
    BlockConfig,
    activation_layer,
    batch_norm,
    conv_bn_act,
    head_forward,
    init_weights,
    make_divisible,
    mlp_head,
    scaled_channels,
)
from soundwatch.models.mobilenet import (
    HEAD_HIDDEN,
    LAST_CONV_EXPANSION,
    MOBILENET_V3_BLOCKS,
    scaled_blocks,
)


@dataclass(frozen=True)
class DynamicSettings:
    """Hyper-parameters of the dynamic blocks (EfficientAT defaults)."""

    context_ratio: int = 4
    """Context size H = expanded channels / context_ratio, clipped to the range below."""
    min_context: int = 32
    max_context: int = 128
    dyconv_kernels: int = 4
    """k: number of kernels each dynamic conv mixes."""
    dyrelu_pieces: int = 2
    """M: number of linear pieces of each dynamic ReLU."""
    temperature: float = 1.0
    """Softmax temperature of the kernel attention. Training anneals it from 30 to 1, so
    the published AudioSet checkpoints run at 1; a freshly built (untrained) reference
    model starts at 30."""


def context_size(expanded: int, width_mult: float, settings: DynamicSettings) -> int:
    """H of a block: a quarter of its expanded width, clipped to [32, 128] x width."""
    size = make_divisible(expanded // settings.context_ratio, 8)
    low = make_divisible(settings.min_context * width_mult, 8)
    high = make_divisible(settings.max_context * width_mult, 8)
    return int(min(max(size, low), high))


class DynamicConv(nn.Module):
    """A convolution whose kernel is a per-example softmax mixture of ``k`` kernels.

    ``weight`` holds the ``k`` kernels flattened, shaped ``[1, 1, k, out * in/groups * kh *
    kw]`` as in the checkpoints; ``residuals.0`` maps the context vector to the ``k`` mixing
    logits. Only 1x1 convs (``groups == 1``) and depthwise convs (``groups == in == out``)
    are used by the networks.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        context_dim: int,
        kernel: int,
        *,
        stride: int = 1,
        groups: int = 1,
        k: int = 4,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel = kernel
        self.stride = stride
        self.padding = (kernel - 1) // 2
        self.groups = groups
        self.k = k
        self.temperature = temperature
        self.residuals = nn.Sequential(nn.Linear(context_dim, k))
        kernels = torch.empty(k, out_channels, in_channels // groups, kernel, kernel)
        for i in range(k):
            nn.init.kaiming_normal_(kernels[i], mode="fan_out")
        self.weight = nn.Parameter(kernels.reshape(1, 1, k, -1))

    def attention(self, context: Tensor) -> Tensor:
        """Kernel mixing weights ``[B, k]`` from the context vector ``[B, H]``."""
        return torch.softmax(self.residuals(context) / self.temperature, dim=-1)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        b, _, f, t = x.shape
        attention = self.attention(context)
        if self.kernel == 1 and self.groups == 1:
            # per-example 1x1 conv == batched matrix product with the mixed kernel
            w = (attention @ self.weight[0, 0]).view(b, self.out_channels, self.in_channels)
            return torch.bmm(w, x.reshape(b, self.in_channels, f * t)).view(
                b, self.out_channels, f, t
            )
        if torch.compiler.is_exporting():
            return self._mix_outputs(x, attention)
        # per-example kernels: fold the batch into the channels and use a grouped conv
        mixed = attention @ self.weight[0, 0]  # [B, out * in/groups * kh * kw]
        w = mixed.view(b * self.out_channels, self.in_channels // self.groups, *(self.kernel,) * 2)
        out = F.conv2d(
            x.reshape(1, b * self.in_channels, f, t),
            w,
            stride=self.stride,
            padding=self.padding,
            groups=self.groups * b,
        )
        return out.view(b, self.out_channels, out.shape[-2], out.shape[-1])

    def _mix_outputs(self, x: Tensor, attention: Tensor) -> Tensor:
        """Same result for depthwise convs, as a mix of the ``k`` kernels' outputs.

        Convolution is linear in the kernel, so conv(x, sum_j a_j W_j) = sum_j a_j conv(x, W_j).
        Used for ONNX export: the grouped-conv form needs ``groups = batch * channels``,
        which ONNX cannot express for a dynamic batch size. Costs k times the depthwise
        multiply-adds.
        """
        if self.groups != self.in_channels or self.in_channels != self.out_channels:
            raise NotImplementedError("kernel mixing is implemented for depthwise convs only")
        c, k = self.out_channels, self.k
        kernels = self.weight[0, 0].view(k, c, 1, self.kernel, self.kernel)
        kernels = kernels.transpose(0, 1).reshape(c * k, 1, self.kernel, self.kernel)
        out = F.conv2d(x, kernels, stride=self.stride, padding=self.padding, groups=c)
        out = out.view(x.shape[0], c, k, out.shape[-2], out.shape[-1])
        return (out * attention[:, None, :, None, None]).sum(dim=2)


class DynamicReLU(nn.Module):
    """Dynamic ReLU-B: per example and channel, ``max_j(a_j * x + c_j)`` over M pieces.

    ``coef_net.0`` maps the context to ``2 * M`` coefficients per channel, squashed to
    [-1, 1], scaled by ``lambdas`` and offset by ``init_v`` (so zero output = identity).
    """

    def __init__(self, channels: int, context_dim: int, pieces: int = 2) -> None:
        super().__init__()
        self.channels = channels
        self.pieces = pieces
        self.coef_net = nn.Sequential(nn.Linear(context_dim, 2 * pieces * channels))
        self.register_buffer("lambdas", torch.tensor([1.0] * pieces + [0.5] * pieces))
        self.register_buffer("init_v", torch.tensor([1.0] + [0.0] * (2 * pieces - 1)))

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        b = x.shape[0]
        theta = 2 * torch.sigmoid(self.coef_net(context)) - 1
        coefs = theta.view(b, self.channels, 2 * self.pieces) * self.lambdas + self.init_v
        coefs = coefs[:, :, :, None, None]  # [B, C, 2M, 1, 1]
        out = x * coefs[:, :, 0] + coefs[:, :, self.pieces]
        for j in range(1, self.pieces):
            out = torch.maximum(out, x * coefs[:, :, j] + coefs[:, :, self.pieces + j])
        return out


class ContextGenerator(nn.Module):
    """Summarises a block input into the context used by its dynamic parts.

    Mean over time gives a frequency profile, mean over frequency a time profile; both go
    through a shared 1x1 conv + BN + hard swish (H channels). Their mean is the context
    vector ``[B, H]``; 1x1 convs map the two profiles (pooled to the block's stride) to
    the coordinate-attention logits ``[B, C_exp, F', 1]`` and ``[B, C_exp, 1, T']``.
    """

    def __init__(self, context_dim: int, in_channels: int, expanded: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.joint_conv = nn.Conv2d(in_channels, context_dim, kernel_size=1, bias=False)
        self.joint_norm = batch_norm(context_dim)
        self.joint_act = nn.Hardswish(inplace=True)
        self.conv_f = nn.Conv2d(context_dim, expanded, kernel_size=1)
        self.conv_t = nn.Conv2d(context_dim, expanded, kernel_size=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        f = x.shape[2]
        freq_profile = x.mean(dim=3, keepdim=True)  # [B, C, F, 1]
        time_profile = x.mean(dim=2, keepdim=True).transpose(2, 3)  # [B, C, T, 1]
        joint = torch.cat([freq_profile, time_profile], dim=2)
        joint = self.joint_act(self.joint_norm(self.joint_conv(joint)))
        context = joint.mean(dim=(2, 3))  # [B, H]
        h_f = joint[:, :, :f]
        h_t = joint[:, :, f:].transpose(2, 3)
        if self.stride > 1:
            s = self.stride
            h_f = F.avg_pool2d(h_f, kernel_size=(3, 1), stride=(s, 1), padding=(1, 0))
            h_t = F.avg_pool2d(h_t, kernel_size=(1, 3), stride=(1, s), padding=(0, 1))
        return context, self.conv_f(h_f), self.conv_t(h_t)


class DynamicInvertedResidual(nn.Module):
    """Inverted residual block with dynamic convs, dynamic ReLU and coordinate attention."""

    def __init__(self, cfg: BlockConfig, width_mult: float, settings: DynamicSettings) -> None:
        super().__init__()
        if cfg.stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {cfg.stride}")
        self.use_residual = cfg.has_residual
        self.has_expansion = cfg.has_expansion
        ctx = context_size(cfg.expanded_channels, width_mult, settings)
        dyconv = {"k": settings.dyconv_kernels, "temperature": settings.temperature}
        exp = cfg.expanded_channels
        if self.has_expansion:
            self.exp_conv = DynamicConv(cfg.in_channels, exp, ctx, 1, **dyconv)
            self.exp_norm = batch_norm(exp)
            self.exp_act = activation_layer(cfg.activation)
        self.depth_conv = DynamicConv(
            exp, exp, ctx, cfg.kernel, stride=cfg.stride, groups=exp, **dyconv
        )
        self.depth_norm = batch_norm(exp)
        self.depth_act = DynamicReLU(exp, ctx, settings.dyrelu_pieces)
        self.proj_conv = DynamicConv(exp, cfg.out_channels, ctx, 1, **dyconv)
        self.proj_norm = batch_norm(cfg.out_channels)
        self.context_gen = ContextGenerator(ctx, cfg.in_channels, exp, cfg.stride)

    def forward(self, x: Tensor) -> Tensor:
        context, att_f, att_t = self.context_gen(x)
        out = x
        if self.has_expansion:
            out = self.exp_act(self.exp_norm(self.exp_conv(out, context)))
        out = self.depth_act(self.depth_norm(self.depth_conv(out, context)), context)
        out = out * torch.sigmoid(att_f) * torch.sigmoid(att_t)  # coordinate attention
        out = self.proj_norm(self.proj_conv(out, context))
        if self.use_residual:
            out = out + x
        return out


class DynamicMobileNet(nn.Module):
    """DyMN tagger; ``forward`` returns ``(logits, embedding)``."""

    def __init__(
        self,
        width_mult: float,
        num_classes: int = 527,
        settings: DynamicSettings | None = None,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        settings = settings if settings is not None else DynamicSettings()
        blocks = scaled_blocks(MOBILENET_V3_BLOCKS, width_mult)
        last_in = blocks[-1].out_channels
        self.embedding_dim = LAST_CONV_EXPANSION * last_in
        self.in_c = conv_bn_act(1, blocks[0].in_channels, 3, stride=2, activation="HS")
        self.layers = nn.ModuleList(
            DynamicInvertedResidual(cfg, width_mult, settings) for cfg in blocks
        )
        self.out_c = conv_bn_act(last_in, self.embedding_dim, 1, activation="HS")
        hidden = scaled_channels(HEAD_HIDDEN, width_mult)
        self.classifier = mlp_head(self.embedding_dim, hidden, num_classes, dropout)
        init_weights(self)

    def set_temperature(self, temperature: float) -> None:
        """Set the kernel-attention softmax temperature of every dynamic conv."""
        for module in self.modules():
            if isinstance(module, DynamicConv):
                module.temperature = temperature

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.in_c(x)
        for layer in self.layers:
            x = layer(x)
        return head_forward(self.classifier, self.out_c(x))
