"""XCiT (cross-covariance image transformer, El-Nouby et al. 2021), as timm builds it.

The fine-tuning starting point of multinorm.md §6 ``imagenet/ramp_ft_xcit_s12``: RobustBench
``Debenedetti2022Light_XCiT-S12``, a timm ``xcit_small_12_p16_224`` (embedding 384, 12 XCA blocks,
8 heads, 2 class-attention blocks, layer-scale 1.0, every token normalised in the class-attention
blocks). Tensor names are timm's, so its state dict loads as is. 26,253,304 parameters with 1000
classes (published: 26.3M).

Pieces, in forward order:

* **Patch embedding**: four 3x3 stride-2 convolutions (each followed by BatchNorm, GELU between
  them): 16x16 patches, embedding width ``D/8, D/4, D/2, D``.
* **Fourier positional encoding**: sine/cosine features of the normalised patch row and column
  (32 frequencies each, temperature 10000), projected to ``D`` by a 1x1 convolution; computed for
  the actual patch grid, so any input size divisible by 16 works (small inputs keep tests fast).
* **XCA blocks** (residual, each branch scaled by a learned per-channel ``gamma``):
  cross-covariance attention (q and k l2-normalised along the tokens, a ``D/h x D/h`` attention
  per head scaled by a learned per-head ``temperature``), then local patch interaction (LPI: two
  depthwise 3x3 convolutions with GELU and BatchNorm between them), then an MLP (ratio 4).
  The branches are applied in the order attention, LPI, MLP, i.e. ``gamma1``, ``gamma3``,
  ``gamma2`` with ``norm1``, ``norm3``, ``norm2``, which is the released weights' naming.
* **Class-attention blocks** (CaiT): a class token attends to all tokens (only its query is
  computed); with ``tokens_norm`` every token passes ``norm2``; the MLP updates the class token.
  As in the reference, the attention branch adds ``gamma1 * norm1(x)`` to the patch tokens and the
  MLP residual doubles them; only the class token reaches the head, but the patch tokens feed the
  next block's keys and values, so this is kept for the released weights to work.
* Final LayerNorm, the class token as features, linear ``head``.

LayerNorms use eps 1e-6. Dropout and stochastic depth are left out: fine-tuning runs them at 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unirobust.errors import ConfigError
from unirobust.models.normalize import ImageClassifier, Normalize

__all__ = ["XCiT"]

PATCH = 16
_LN_EPS = 1e-6


def _layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=_LN_EPS)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ConvPatchEmbed(nn.Module):
    """Four (conv 3x3 stride 2, BN) stages with GELU between them: (B, C, H, W) -> (B, N, D)."""

    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        widths = [in_chans, dim // 8, dim // 4, dim // 2, dim]
        layers: list[nn.Module] = []
        for i in range(4):
            if i:
                layers.append(nn.GELU())
            layers.append(
                nn.Sequential(
                    nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1, bias=False),
                    nn.BatchNorm2d(widths[i + 1]),
                )
            )
        self.proj = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.proj(x)
        _, _, hp, wp = x.shape
        return x.flatten(2).transpose(1, 2), hp, wp


class FourierPositions(nn.Module):
    """Fixed sine/cosine features of the (row, column) patch position, projected to ``dim``."""

    def __init__(self, dim: int, hidden: int = 32, temperature: float = 10000.0) -> None:
        super().__init__()
        self.token_projection = nn.Conv2d(2 * hidden, dim, 1)
        self.hidden = hidden
        self.temperature = temperature

    def _features(self, n: int, device: torch.device) -> Tensor:
        """(n, hidden): position 1..n scaled to (0, 2π], divided by the frequencies; entry j
        is the sine for even j and the cosine for odd j (frequencies come in equal pairs)."""
        pos = torch.arange(1, n + 1, device=device, dtype=torch.float32)
        pos = pos / (n + 1e-6) * (2 * math.pi)
        j = torch.arange(self.hidden, device=device, dtype=torch.float32)
        freq = self.temperature ** (2 * torch.div(j, 2, rounding_mode="floor") / self.hidden)
        angles = pos[:, None] / freq
        out = torch.empty_like(angles)
        out[:, 0::2] = angles[:, 0::2].sin()
        out[:, 1::2] = angles[:, 1::2].cos()
        return out

    def forward(self, batch: int, hp: int, wp: int) -> Tensor:
        """(batch, hp * wp, dim): row features first, then column features, per token."""
        weight = self.token_projection.weight
        rows = self._features(hp, weight.device)[:, None, :].expand(hp, wp, self.hidden)
        cols = self._features(wp, weight.device)[None, :, :].expand(hp, wp, self.hidden)
        grid = torch.cat([rows, cols], dim=-1).permute(2, 0, 1)[None].to(weight.dtype)
        pos = self.token_projection(grid)  # (1, dim, hp, wp)
        return pos.flatten(2).transpose(1, 2).expand(batch, -1, -1)


class XCA(nn.Module):
    """Cross-covariance attention: a (D/h x D/h) softmax attention over channels, per head."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 4, 1)
        q, k, v = qkv.unbind(0)  # each (B, heads, C/heads, N)
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)
        out = (attn @ v).permute(0, 3, 1, 2).reshape(b, n, c)
        return self.proj(out)


class LPI(nn.Module):
    """Local patch interaction: depthwise 3x3, GELU, BN, depthwise 3x3 on the token grid."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.act = nn.GELU()
        self.bn = nn.BatchNorm2d(dim)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: Tensor, hp: int, wp: int) -> Tensor:
        b, n, c = x.shape
        grid = x.transpose(1, 2).reshape(b, c, hp, wp)
        grid = self.conv2(self.bn(self.act(self.conv1(grid))))
        return grid.reshape(b, c, n).transpose(1, 2)


class XCABlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, eta: float) -> None:
        super().__init__()
        self.norm1 = _layer_norm(dim)
        self.attn = XCA(dim, heads)
        self.norm3 = _layer_norm(dim)
        self.local_mp = LPI(dim)
        self.norm2 = _layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.gamma1 = nn.Parameter(torch.full((dim,), eta))
        self.gamma3 = nn.Parameter(torch.full((dim,), eta))
        self.gamma2 = nn.Parameter(torch.full((dim,), eta))

    def forward(self, x: Tensor, hp: int, wp: int) -> Tensor:
        x = x + self.gamma1 * self.attn(self.norm1(x))
        x = x + self.gamma3 * self.local_mp(self.norm3(x), hp, wp)
        return x + self.gamma2 * self.mlp(self.norm2(x))


class ClassAttention(nn.Module):
    """The class token's query against every token's key and value (CaiT); returns (B, 1, C)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        d = c // self.heads
        q = self.q(x[:, :1]).reshape(b, 1, self.heads, d).transpose(1, 2)  # (B, h, 1, d)
        k = self.k(x).reshape(b, n, self.heads, d).transpose(1, 2)  # (B, h, N, d)
        v = self.v(x).reshape(b, n, self.heads, d).transpose(1, 2)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, 1, c))


class ClassAttentionBlock(nn.Module):
    def __init__(
        self, dim: int, heads: int, mlp_ratio: float, eta: float, tokens_norm: bool
    ) -> None:
        super().__init__()
        self.norm1 = _layer_norm(dim)
        self.attn = ClassAttention(dim, heads)
        self.norm2 = _layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.gamma1 = nn.Parameter(torch.full((dim,), eta))
        self.gamma2 = nn.Parameter(torch.full((dim,), eta))
        self.tokens_norm = tokens_norm

    def forward(self, x: Tensor) -> Tensor:
        normed = self.norm1(x)
        x = x + self.gamma1 * torch.cat([self.attn(normed), normed[:, 1:]], dim=1)
        if self.tokens_norm:
            x = self.norm2(x)
        else:
            x = torch.cat([self.norm2(x[:, :1]), x[:, 1:]], dim=1)
        cls = self.gamma2 * self.mlp(x[:, :1])
        return x + torch.cat([cls, x[:, 1:]], dim=1)


class XCiT(ImageClassifier):
    head_name = "head"

    def __init__(
        self,
        *,
        num_classes: int,
        input_shape: tuple[int, int, int],
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        cls_attn_layers: int = 2,
        eta: float = 1.0,
        tokens_norm: bool = True,
        normalize: Normalize | None = None,
    ) -> None:
        super().__init__(num_classes, input_shape, normalize)
        _, height, width = self.input_shape
        if height % PATCH or width % PATCH:
            raise ConfigError(
                f"xcit needs an input height and width divisible by {PATCH}, got "
                f"{height}x{width} (e.g. image_size 224)"
            )
        if embed_dim % 8 or embed_dim % num_heads:
            raise ConfigError(
                f"xcit embed_dim must be divisible by 8 and by num_heads, got {embed_dim} "
                f"with {num_heads} heads"
            )
        self.patch_embed = ConvPatchEmbed(self.input_shape[0], embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = FourierPositions(embed_dim)
        self.blocks = nn.ModuleList(
            XCABlock(embed_dim, num_heads, mlp_ratio, eta) for _ in range(depth)
        )
        self.cls_attn_blocks = nn.ModuleList(
            ClassAttentionBlock(embed_dim, num_heads, mlp_ratio, eta, tokens_norm)
            for _ in range(cls_attn_layers)
        )
        self.norm = _layer_norm(embed_dim)
        self.head = nn.Linear(embed_dim, self.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """Truncated normal (std 0.02) linear weights and class token, zero linear biases."""
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        tokens, hp, wp = self.patch_embed(x)
        tokens = tokens + self.pos_embed(tokens.shape[0], hp, wp)
        for block in self.blocks:
            tokens = block(tokens, hp, wp)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        for block in self.cls_attn_blocks:
            tokens = block(tokens)
        return self.norm(tokens)[:, 0]
