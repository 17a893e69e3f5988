"""VQGAN decoder and codebook for taming-transformers checkpoints (``.ckpt`` with ``state_dict`` + ``model.yaml``).

Only what CLIP guidance needs: the codebook (``quantize.embedding``), ``post_quant_conv`` and the
``decoder``, with taming-transformers' parameter names so released checkpoints load unchanged. The
encoder, discriminator and loss weights in a checkpoint are ignored. Quantisation is straight-through:
the forward pass uses the nearest codebook vectors, the backward pass flows into the continuous latent.
"""

from __future__ import annotations

import logging
import os
import pickle
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, KontrastError

logger = logging.getLogger(__name__)


@dataclass
class VQGANConfig:
    """taming's ``ddconfig`` plus the codebook size (``n_embed``) and code dimension (``embed_dim``)."""

    n_embed: int = 1024
    embed_dim: int = 256
    z_channels: int = 256
    resolution: int = 256
    out_ch: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> VQGANConfig:
        """Read taming's ``model.yaml`` (``model.target: taming.models.vqgan.VQModel``, ``model.params``)."""
        import yaml

        fix = "pass the model.yaml that came with the VQGAN checkpoint"
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise KontrastError(f"VQGAN config not found: {path}; {fix}") from exc
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise KontrastError(f"cannot read VQGAN config {path}: {str(exc).splitlines()[0]}; {fix}") from exc
        try:
            target = str(raw["model"].get("target", "taming.models.vqgan.VQModel"))
            params = raw["model"]["params"]
            dd = params["ddconfig"]
            cfg = cls(
                n_embed=int(params["n_embed"]), embed_dim=int(params["embed_dim"]), z_channels=int(dd["z_channels"]),
                resolution=int(dd["resolution"]), out_ch=int(dd.get("out_ch", 3)), ch=int(dd["ch"]),
                ch_mult=tuple(int(m) for m in dd["ch_mult"]), num_res_blocks=int(dd["num_res_blocks"]),
                attn_resolutions=tuple(int(r) for r in dd.get("attn_resolutions") or ()),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise KontrastError(f"{path}: not a taming-transformers VQGAN model.yaml (needs model.params with "
                                f"n_embed, embed_dim and ddconfig; problem: {exc!r}); {fix}") from exc
        if target.rsplit(".", 1)[-1] not in ("VQModel", "VQNoDiscModel", "EMAVQ"):
            raise KontrastError(f"{path}: model.target {target} is not supported; only taming.models.vqgan.VQModel "
                                "checkpoints (nearest-neighbour codebook) can be decoded")
        if any(cfg.ch * m % 32 for m in cfg.ch_mult) or cfg.z_channels < 1 or not cfg.ch_mult:
            raise KontrastError(f"{path}: ddconfig ch * ch_mult must be multiples of 32 (taming's GroupNorm)")
        return cfg

    @property
    def downsample(self) -> int:
        """Pixels per latent cell (16 for the usual 5-level configs)."""
        return 2 ** (len(self.ch_mult) - 1)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1 convolutions for q, k, v and the output."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y = self.norm(x)
        # [N, C, H, W] -> [N, H*W, C] (a single head of width C)
        q, k, v = (conv(y).reshape(n, c, h * w).transpose(1, 2) for conv in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]  # [N, H*W, C]
        out = out.transpose(1, 2).reshape(n, c, h, w)  # [N, H*W, C] -> [N, C, H, W]
        return x + self.proj_out(out)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Decoder(nn.Module):
    """taming-transformers ``Decoder``: latent ``[N, z, h, w]`` -> image ``[N, 3, h*f, w*f]`` in [-1, 1]-ish."""

    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        levels = len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // 2 ** (levels - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in)
        up_levels = []
        for level in reversed(range(levels)):
            stage = nn.Module()
            block_out = cfg.ch * cfg.ch_mult[level]
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(block_in))
            stage.block = nn.ModuleList(blocks)
            stage.attn = nn.ModuleList(attns)
            if level != 0:
                stage.upsample = Upsample(block_in)
                res *= 2
            up_levels.insert(0, stage)  # taming indexes ``up`` from the finest level
        self.up = nn.ModuleList(up_levels)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(range(len(self.up))):
            stage = self.up[level]
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn) > 0:
                    h = stage.attn[i](h)
            if level != 0:
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    def __init__(self, n_embed: int, embed_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest code per cell with a straight-through gradient: ``[N, D, h, w] -> [N, D, h, w]``."""
        n, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # [N, D, h, w] -> [N*h*w, D]
        codes = self.embedding.weight
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codes.T + codes.pow(2).sum(1)[None]  # [N*h*w, K]
        quantised = codes[dist.argmin(dim=1)].reshape(n, h, w, d).permute(0, 3, 1, 2)  # -> [N, D, h, w]
        return z + (quantised - z).detach()


class VQGANDecoder(nn.Module):
    """``quantize`` + ``post_quant_conv`` + ``decoder`` of a taming ``VQModel``."""

    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        self.config = cfg
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)
        self.decoder = Decoder(cfg)

    def decode(self, z: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        """Latent ``[N, embed_dim, h, w]`` -> RGB in [0, 1], ``[N, 3, h*f, w*f]``."""
        if quantize:
            z = self.quantize(z)
        x = self.decoder(self.post_quant_conv(z))
        return (x.clamp(-1, 1) + 1) / 2

    def random_latent(self, height: int, width: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """A latent made of random codebook entries (how VQGAN+CLIP starts)."""
        f = self.config.downsample
        h, w = max(1, height // f), max(1, width // f)
        idx = torch.randint(self.config.n_embed, (h * w,), generator=generator)
        z = self.quantize.embedding.weight[idx].reshape(1, h, w, -1).permute(0, 3, 1, 2)  # [h*w, D] -> [1, D, h, w]
        return z.detach().clone()


class _Missing:
    """Stands in for a class a checkpoint's pickle names but this environment lacks (PyTorch Lightning
    callbacks, a training script's hyper-parameter objects): it accepts any construction and state."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _LenientUnpickler(pickle.Unpickler):
    """Full pickle (only used when the user trusts the file) that replaces unimportable classes."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            logger.info("VQGAN checkpoint: %s.%s is not importable; loading a placeholder", module, name)
            return type(name, (_Missing,), {"__module__": module})


def _lenient_pickle_module() -> types.ModuleType:
    module = types.ModuleType("kontrast_lenient_pickle")
    module.Unpickler = _LenientUnpickler  # type: ignore[attr-defined]
    module.load = pickle.load  # type: ignore[attr-defined]
    module.__dict__.update({"UnpicklingError": pickle.UnpicklingError})
    return module


def read_checkpoint(checkpoint: str | os.PathLike, trust_checkpoint: bool = False) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a taming ``.ckpt`` (or a bare state dict).

    Read with ``weights_only=True`` (tensors and plain containers only) unless ``trust_checkpoint``:
    PyTorch Lightning checkpoints may also pickle callback or hyper-parameter objects, which only a full
    unpickle — able to run code from the file — can read; classes that cannot be imported become
    placeholders, so ``pytorch_lightning`` need not be installed.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"VQGAN checkpoint not found: {checkpoint}; pass --vqgan-checkpoint FILE.ckpt")
    try:
        if trust_checkpoint:
            raw = torch.load(str(path), map_location="cpu", weights_only=False, pickle_module=_lenient_pickle_module())
        else:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if trust_checkpoint:
            raise CheckpointError(f"{checkpoint}: cannot read VQGAN checkpoint ({str(exc).splitlines()[0][:120]})") from exc
        raise CheckpointError(f"{checkpoint} stores Python objects besides tensors (usual for PyTorch Lightning "
                              "checkpoints); if you trust the file, pass --trust-checkpoint "
                              "(trust_checkpoint=True)") from exc
    except Exception as exc:
        raise CheckpointError(f"{checkpoint}: cannot read VQGAN checkpoint ({type(exc).__name__}); "
                              "expected a taming-transformers .ckpt") from exc
    sd = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{checkpoint}: expected a dict with a 'state_dict' of tensors (a taming .ckpt)")
    return sd


def load_vqgan(checkpoint: str | os.PathLike, config: str | os.PathLike,
               trust_checkpoint: bool = False) -> VQGANDecoder:
    """A taming-transformers VQGAN from ``.ckpt`` (a dict with ``state_dict``) and ``model.yaml``.
    ``trust_checkpoint``: see ``read_checkpoint``."""
    cfg = VQGANConfig.from_yaml(config)
    model = VQGANDecoder(cfg)
    sd = read_checkpoint(checkpoint, trust_checkpoint=trust_checkpoint)
    own = model.state_dict()
    wanted = {k: v for k, v in sd.items() if k in own}  # the encoder, quant_conv and loss weights are not needed
    missing = sorted(set(own) - set(wanted))
    shapes = [k for k in own if k in wanted and wanted[k].shape != own[k].shape]
    if missing or shapes:
        detail = (f"missing {', '.join(missing[:3])}" if missing else
                  ", ".join(f"{k} is {tuple(wanted[k].shape)}, config wants {tuple(own[k].shape)}" for k in shapes[:2]))
        raise CheckpointError(f"{checkpoint} does not fit {config}: {detail}; pass the model.yaml that came with it")
    model.load_state_dict(wanted)
    return model.eval()
