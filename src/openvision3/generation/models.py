"""DiT-DH: a diffusion transformer with a wide, shallow head, on a grid of unified tokens.

The architecture of RAE's ``DiTwDDTHead`` (``src/stage2/models/DDT.py``, with the layers of
``src/stage2/models/model_utils.py``), written for this package:

- a backbone of ``depth`` blocks, ``width`` wide, on the token grid: 1x1 (p x p) patch
  embedding + fixed 2-D sin-cos positions, conditioned on c = SiLU(t_emb + y_emb) (each
  block's adaLN applies SiLU again, as RAE's does);
- s = SiLU(t_emb + backbone output), projected to the head's width;
- a head of ``head_depth`` blocks, ``head_width`` wide, on the noisy input again (its own patch
  embedding, no absolute positions), each block conditioned per token on s;
- a final layer: RMSNorm, per-token shift/scale from s, Linear to the input channels.

Every block (``DiTBlock``, the same for backbone and head): RMSNorm, attention with qkv bias,
no qk-norm and 2-D RoPE on q and k (EVA's ``VisionRotaryEmbeddingFast``, interleaved pairs, half
the head dimension per axis), SwiGLU MLP, adaLN-Zero (shift, scale, gate for each branch).
The time embedding is Gaussian-Fourier (256 fixed frequencies); the class table has a null
class (index ``num_classes``) for classifier-free guidance. Parameter names follow RAE's, so a
RAE checkpoint's ``state_dict`` loads as is (strictly).

``head_depth = 0`` is the plain DiT baseline, RAE's ``LightningDiT``
(``src/stage2/models/lightningDiT.py``, ``learn_sigma=False``): its names (``x_embedder``,
``feat_rope``), its condition c = t_emb + y_emb (the adaLN layers apply the only SiLU), the
final layer conditioned on c, its init (xavier-uniform on every Linear before the DiT init) and
its sin-cos table (column in the first half of the channels). Label dropout is the training
task's (``GenerationTask``), not the model's; in eval mode both forwards are the same function.
Plain-DiT state dicts written before these names load through ``convert_legacy_plain_dit``
and keep the SiLU(t + y) condition they were trained with.

Time t in [0, 1] with t = 1 pure noise; the output is the flow velocity, the shape of the input.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from openvision3.models.posemb import sincos_2d

log = logging.getLogger(__name__)


@dataclass
class DiTDHConfig:
    """Sizes of a DiT-DH. `in_channels` x `input_size`^2 is the token grid (C, H, W);
    `head_depth = 0` gives the plain DiT (no head, `head_*` unused). `class_init_std`:
    the label table's initial std (RAE: 0.02; a short run learns its labels faster from
    larger, well-separated rows, see `presets.demo_dit`). `legacy_silu_condition` (plain
    DiT only): condition on SiLU(t_emb + y_emb) as plain DiTs did before they matched
    LightningDiT's t_emb + y_emb; set by `DiTDH.load_state_dict` when it converts such a
    checkpoint, so its weights keep the function they were trained for."""

    in_channels: int = 768  # token channels D (read from --data.cache when not given)
    input_size: int = 16  # token grid side h (read from --data.cache when not given)
    patch_size: int = 1  # tokens per DiT patch side
    width: int = 1152  # DiT backbone width
    depth: int = 28  # DiT backbone blocks
    heads: int = 16  # DiT backbone attention heads
    head_width: int = 2048  # DDT head width (RAE: 2048)
    head_depth: int = 2  # DDT head blocks; 0 = plain DiT (RAE's LightningDiT)
    head_heads: int = 16  # DDT head attention heads
    mlp_ratio: float = 4.0  # MLP hidden width / width
    num_classes: int = 1000  # classes (one more row is the null class of CFG)
    time_frequencies: int = 256  # sinusoidal frequencies of the time embedding
    class_init_std: float = 0.02  # initial std of the label table (RAE: 0.02)
    legacy_silu_condition: bool = False  # plain DiT saved before it matched LightningDiT

    def __post_init__(self):
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size {self.input_size} is not a multiple of patch_size")
        sizes = [(self.width, self.heads)]
        if self.head_depth:
            sizes.append((self.head_width, self.head_heads))
        for width, heads in sizes:
            if width % heads or (width // heads) % 4:
                raise ValueError(f"width {width} / {heads} heads: head dim must divide by 4")
        if self.class_init_std <= 0:
            raise ValueError(f"class_init_std must be > 0, got {self.class_init_std}")
        if self.depth < 1 or self.head_depth < 0 or self.num_classes < 1:
            raise ValueError("need depth >= 1, head_depth >= 0, num_classes >= 1")
        if self.legacy_silu_condition and self.head_depth:
            raise ValueError("legacy_silu_condition is a plain-DiT (head_depth 0) setting")

    @property
    def grid(self) -> int:
        return self.input_size // self.patch_size


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return F.rms_norm(x.float(), (x.shape[-1],), eps=eps).type_as(x) * weight


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 (RAE's ``RMSNorm``), learnable gain, eps 1e-6."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class Rope2d(nn.Module):
    """2-D rotary embedding of a (side x side) grid for heads of ``head_dim``: each axis rotates
    half the head dimension, frequencies 1 / 10000^(2i / (head_dim/2)) in interleaved pairs."""

    def __init__(self, head_dim: int, side: int):
        super().__init__()
        dim = head_dim // 2
        freqs = 1.0 / 10000 ** (torch.arange(0, dim, 2).float() / dim)  # (dim/2,)
        pos = torch.arange(side).float()
        f = torch.repeat_interleave(pos[:, None] * freqs[None], 2, dim=-1)  # (side, dim)
        grid = torch.cat(
            [f[:, None].expand(side, side, dim), f[None].expand(side, side, dim)], dim=-1
        ).reshape(side * side, head_dim)  # (N, head_dim): rows (h) then columns (w)
        self.register_buffer("freqs_cos", grid.cos())
        self.register_buffer("freqs_sin", grid.sin())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K, N, d) -> the same, rotated."""
        pairs = x.unflatten(-1, (-1, 2))
        rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        return x * self.freqs_cos + rotated * self.freqs_sin


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: Rope2d) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, K, N, d)
        q, k = rope(q).to(v.dtype), rope(k).to(v.dtype)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block; ``c`` is (B, D) (one condition per sample) or (B, N, D)
    (per token, in the head)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = RMSNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = RMSNorm(dim)
        self.mlp = SwiGLU(dim, int(2 / 3 * int(dim * mlp_ratio)))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope: Rope2d) -> torch.Tensor:
        if c.dim() == 2:
            c = c[:, None]
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate1 * self.attn(self.norm1(x) * (1 + scale1) + shift1, rope)
        return x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out: int):
        super().__init__()
        self.norm_final = RMSNorm(dim)
        self.linear = nn.Linear(dim, out)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if c.dim() == 2:
            c = c[:, None]
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)  # no gate
        return self.linear(self.norm_final(x) * (1 + scale) + shift)


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, N, D) with a p x p convolution (a 1x1 one at patch 1)."""

    def __init__(self, channels: int, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class GaussianFourierEmbedding(nn.Module):
    """t (B,) -> (B, D): [sin(2 pi t W), cos(2 pi t W)] with W ~ N(0, 1) fixed, then an MLP."""

    def __init__(self, dim: int, frequencies: int = 256):
        super().__init__()
        self.W = nn.Parameter(torch.randn(frequencies), requires_grad=False)
        self.mlp = nn.Sequential(nn.Linear(2 * frequencies, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angle = t.float()[:, None] * self.W.float()[None] * (2 * math.pi)
        emb = torch.cat([angle.sin(), angle.cos()], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class table with one extra row, the null class ``num_classes`` (dropped labels)."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels)


# Plain-DiT parameter names before they were LightningDiT's -> LightningDiT's.
LEGACY_PLAIN_DIT_NAMES = {"s_embedder.": "x_embedder.", "enc_feat_rope.": "feat_rope."}


def convert_legacy_plain_dit(state_dict: dict, prefix: str = "") -> bool:
    """Rename, in place, the keys of a plain-DiT state dict written before the plain DiT took
    LightningDiT's names (``s_embedder.*`` -> ``x_embedder.*``, ``enc_feat_rope.*`` ->
    ``feat_rope.*``, under ``prefix``). Returns whether any key was renamed. A state dict that
    has ``x_embedder`` already (LightningDiT's, or a DiT-DH's head) is left as it is."""
    renamed = False
    if any(k.startswith(prefix + "x_embedder.") for k in state_dict):
        return renamed
    for key in list(state_dict):
        for old, new in LEGACY_PLAIN_DIT_NAMES.items():
            if key.startswith(prefix + old):
                state_dict[prefix + new + key[len(prefix + old) :]] = state_dict.pop(key)
                renamed = True
    return renamed


def _xavier_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class DiTDH(nn.Module):
    """``DiTDH(cfg)(x, t, y)``: noisy tokens (B, C, H, W), times (B,), labels (B,) (null class
    ``cfg.num_classes``) -> velocity (B, C, H, W). ``head_depth = 0``: RAE's ``LightningDiT``."""

    _no_split_modules = ["DiTBlock"]  # the unit of activation checkpointing, compile, FSDP2

    def __init__(self, cfg: DiTDHConfig):
        super().__init__()
        self.cfg = cfg
        c, p, g = cfg.in_channels, cfg.patch_size, cfg.grid
        head = cfg.head_depth > 0
        out_width = cfg.head_width if head else cfg.width
        # Registration order: RAE's construction order for the plain DiT (one seed gives
        # LightningDiT's init); unchanged for the DiT-DH (optimizer state is saved by index).
        if head:  # DiTwDDTHead: s_embedder (backbone), x_embedder (head)
            self.s_embedder = PatchEmbed(c, cfg.width, p)
        else:  # LightningDiT: x_embedder
            self.x_embedder = PatchEmbed(c, cfg.width, p)
        self.pos_embed = nn.Parameter(torch.zeros(1, g * g, cfg.width), requires_grad=False)
        self.t_embedder = GaussianFourierEmbedding(cfg.width, cfg.time_frequencies)
        self.y_embedder = LabelEmbedder(cfg.num_classes, cfg.width)
        rope = Rope2d(cfg.width // cfg.heads, g)
        if head:
            self.enc_feat_rope = rope
        else:
            self.feat_rope = rope
        widths = [(cfg.width, cfg.heads)] * cfg.depth
        if head:
            self.x_embedder = PatchEmbed(c, cfg.head_width, p)
            same = cfg.width == cfg.head_width
            self.s_projector = nn.Identity() if same else nn.Linear(cfg.width, cfg.head_width)
            self.dec_feat_rope = Rope2d(cfg.head_width // cfg.head_heads, g)
            widths += [(cfg.head_width, cfg.head_heads)] * cfg.head_depth
        self.blocks = nn.ModuleList(DiTBlock(w, k, cfg.mlp_ratio) for w, k in widths)
        self.final_layer = FinalLayer(out_width, p * p * c)
        if not head:
            self.register_load_state_dict_pre_hook(DiTDH._convert_legacy_names)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """RAE's init. Plain DiT (``LightningDiT.initialize_weights``): xavier-uniform on every
        Linear with zero bias first. Then both: xavier patch embeddings, N(0, 0.02) label table
        (``class_init_std``) and time MLP, sin-cos positions, adaLN and output layers zero
        (adaLN-Zero). The DiT-DH (``DiTwDDTHead``, ``xavier_uniform_init=False``) leaves its
        other Linears as PyTorch initialises them."""
        if not self.cfg.head_depth:
            self.apply(_xavier_linear)
        for emb in [self.backbone_embedder] + ([self.x_embedder] if self.cfg.head_depth else []):
            w = emb.proj.weight.data
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
            nn.init.zeros_(emb.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=self.cfg.class_init_std)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.pos_embed.device.type != "meta":
            self.pos_embed.data.copy_(self.sincos_table()[None])
        for module in [*self.blocks, self.final_layer]:
            nn.init.zeros_(module.adaLN_modulation[-1].weight)
            nn.init.zeros_(module.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    @property
    def backbone_embedder(self) -> PatchEmbed:
        """The backbone's patch embedding: ``s_embedder`` (DiT-DH) or ``x_embedder`` (plain)."""
        return self.s_embedder if self.cfg.head_depth else self.x_embedder

    @property
    def backbone_rope(self) -> Rope2d:
        """The backbone's RoPE: ``enc_feat_rope`` (DiT-DH) or ``feat_rope`` (plain)."""
        return self.enc_feat_rope if self.cfg.head_depth else self.feat_rope

    def sincos_table(self) -> torch.Tensor:
        """The fixed (N, D) position table. Plain DiT: RAE's ``get_2d_sincos_pos_embed`` (the
        column in the first half of the channels); DiT-DH: the row first (its table is in every
        checkpoint, so RAE's loads unchanged)."""
        d, g = self.cfg.width, self.cfg.grid
        table = sincos_2d(d, g, g)  # (N, D): [row, column]
        if self.cfg.head_depth:
            return table
        return torch.cat([table[:, d // 2 :], table[:, : d // 2]], dim=1)

    @staticmethod
    def _convert_legacy_names(module, state_dict, prefix, *args) -> None:
        """Load-time converter of plain-DiT checkpoints written before LightningDiT's names;
        such weights were trained on SiLU(t + y), so the model keeps that condition."""
        if convert_legacy_plain_dit(state_dict, prefix) and not module.cfg.legacy_silu_condition:
            module.cfg.legacy_silu_condition = True
            log.warning(
                "converted a plain-DiT state dict with the names before LightningDiT's "
                "(s_embedder, enc_feat_rope); it keeps the SiLU(t + y) condition it was "
                "trained with (DiTDHConfig.legacy_silu_condition)"
            )

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, p*p*C) -> (B, C, H, W), patches in (p, p, C) order as RAE's ``unpatchify``."""
        p, c, g = self.cfg.patch_size, self.cfg.in_channels, self.cfg.grid
        x = x.reshape(x.shape[0], g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, g * p, g * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        t_emb = self.t_embedder(t)  # (B,) -> (B, D)
        c = t_emb + self.y_embedder(y)  # LightningDiT: t + y; the adaLN's SiLU is the only one
        if cfg.head_depth or cfg.legacy_silu_condition:
            c = F.silu(c)  # DiTwDDTHead: SiLU(t + y), and the adaLN's SiLU again
        s = self.backbone_embedder(x) + self.pos_embed  # (B, C, H, W) -> (B, N, D)
        for block in self.blocks[: cfg.depth]:
            s = block(s, c, self.backbone_rope)
        if not cfg.head_depth:  # plain DiT
            return self.unpatchify(self.final_layer(s, c))
        s = self.s_projector(F.silu(t_emb[:, None] + s))  # (B, N, D) -> (B, N, D_h)
        h = self.x_embedder(x)  # (B, C, H, W) -> (B, N, D_h)
        for block in self.blocks[cfg.depth :]:
            h = block(h, s, self.dec_feat_rope)
        return self.unpatchify(self.final_layer(h, s))


def count_parameters(model: nn.Module) -> int:
    """Every parameter, the frozen sin-cos table and Fourier frequencies included (how RAE's
    module counts them)."""
    return sum(p.numel() for p in model.parameters())
