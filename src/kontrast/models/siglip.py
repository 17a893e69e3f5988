"""SigLIP / SigLIP 2 towers (fixed resolution), written natively on kontrast's transformer blocks.

Image tower (``SigLIPVisionTransformer``): patch convolution with bias, learned positions for the patches only (no
class token, no ``ln_pre``), pre-LN blocks, a final LayerNorm (``ln_post``) over every token, then the
attention-pool ("map") head: one learned query (``probe``) attends over the tokens, then ``x + mlp(ln(x))``;
no projection (the joint space is the tower's width).

Text tower (``SigLIPTextTransformer``): token + position embeddings, blocks WITHOUT a causal mask, final LayerNorm,
the LAST position pooled (SigLIP pads every text to the context length), a projection with bias.

Parameter names follow kontrast/OpenAI (``visual.conv1``, ``transformer.resblocks.N.attn.in_proj_weight``, ...);
``checkpoints/siglip_convert.py`` maps them from and to open_clip's timm names and Hugging Face's Siglip names.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..record import ModelRecord
from .layers import (
    Attention,
    Transformer,
    check_feature_output,
    hidden_state_index,
    linear,
    linear_params,
    make_activation,
    tracing,
)
from .locating import LocateMixin


def mlp_ratio_for(hidden: int, width: int) -> float:
    """An ``mlp_ratio`` with ``int(width * ratio) == hidden`` (blocks size their MLP as ``int(width * ratio)``)."""
    ratio = hidden / width
    return ratio if int(width * ratio) == hidden else (hidden + 0.5) / width


class MAPHead(nn.Module):
    """Multi-head attention pooling with one learned query (timm ``AttentionPoolLatent``, HF ``...PoolingHead``)."""

    def __init__(self, width: int, heads: int, mlp_hidden: int, act: str = "gelu", eps: float = 1e-6) -> None:
        super().__init__()
        self.probe = nn.Parameter(torch.zeros(1, 1, width))
        self.attn = Attention(width, heads)  # in_proj_weight = cat[q, k, v]; only the probe is a query
        self.ln = nn.LayerNorm(width, eps=eps)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, mlp_hidden)), ("gelu", make_activation(act)), ("c_proj", nn.Linear(mlp_hidden, width)),
        ]))

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None) -> torch.Tensor:
        """``[N, L, D] -> [N, D]``; ``key_padding`` ``[N, L]`` (True = a real token) leaves padded tokens out."""
        n, length, width = x.shape
        heads = self.attn.heads
        weight, bias = self.attn.in_proj_weight, self.attn.in_proj_bias
        q = linear_params(self.probe.to(x.dtype), weight[:width], bias[:width])  # [1, 1, D]
        q = q.view(1, heads, 1, width // heads).expand(n, -1, -1, -1)  # [1, 1, D] -> [N, H, 1, D/H]
        kv = linear_params(x, weight[width:], bias[width:])  # [N, L, 2D]
        kv = kv.view(n, length, 2, heads, width // heads).permute(2, 0, 3, 1, 4)  # -> [2, N, H, L, D/H]
        mask = None if key_padding is None else key_padding.bool().view(n, 1, 1, length)  # [N, 1, 1, L]
        out = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask)  # [N, H, 1, D/H]
        out = linear(out.reshape(n, width), self.attn.out_proj)  # [N, H, 1, D/H] -> [N, D]
        mlp = self.mlp
        return linear(linear(self.ln(out), mlp.c_fc, act=mlp.gelu), mlp.c_proj, residual=out)


class SigLIPVisionTransformer(nn.Module):
    """SigLIP image tower: ``attn_pool(ln_post(transformer(conv1(x) + positions)))`` -> ``[N, width]``."""

    def __init__(self, image_size: int, patch_size: int, width: int, layers: int, heads: int, mlp_ratio: float = 4.0,
                 act: str = "gelu", eps: float = 1e-6, pool_heads: int | None = None) -> None:
        super().__init__()
        self.image_size, self.patch_size = image_size, patch_size
        self.grid_size = image_size // patch_size
        self.output_dim = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=True)
        self.positional_embedding = nn.Parameter(torch.zeros(self.grid_size**2, width))
        self.transformer = Transformer(width, layers, heads, mlp_ratio, act, eps)
        self.ln_post = nn.LayerNorm(width, eps=eps)
        self.attn_pool = MAPHead(width, pool_heads or heads, int(width * mlp_ratio), act, eps)

    def init_weights(self) -> None:
        width = self.positional_embedding.shape[1]
        nn.init.normal_(self.positional_embedding, std=width**-0.5)
        nn.init.normal_(self.attn_pool.probe, std=width**-0.5)
        nn.init.xavier_uniform_(self.attn_pool.attn.in_proj_weight)
        self.transformer.init_weights()

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding ``[N, 3, H, W] -> [N, g*g, D]`` (the stride-p convolution as one matrix multiply)."""
        p, weight = self.patch_size, self.conv1.weight
        if x.shape[2] % p or x.shape[3] % p:  # the convolution drops the last partial patch (so400m/14 at 384 px)
            x = x[:, :, : x.shape[2] // p * p, : x.shape[3] // p * p]
        n, c, h, w = x.shape
        gh, gw = h // p, w // p
        # [N, C, gh*p, gw*p] -> [N, C, gh, p, gw, p] -> [N, gh, gw, C, p, p] -> [N, gh*gw, C*p*p]
        patches = x.reshape(n, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(n, gh * gw, c * p * p)
        # [D, C, p, p] -> [D, C*p*p], the same (channel, row, column) order as the patches
        return linear_params(patches, weight.reshape(weight.shape[0], -1), self.conv1.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W] -> [N, g*g, D]``: patches plus positions (no class token, no ``ln_pre``)."""
        x = self.patchify(x.to(self.conv1.weight.dtype))
        pos = self.positional_embedding
        if pos.shape[0] != x.shape[1]:
            raise ValueError(
                f"{x.shape[1]} patches do not fit the {self.grid_size}x{self.grid_size} position grid of this "
                f"SigLIP tower; feed {self.image_size}x{self.image_size} pixels (the model's preprocess does)"
            )
        return x + pos.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image embeddings ``[N, D]``."""
        return self.attn_pool(self.ln_post(self.transformer(self.embed(x))))

    def forward_features(
        self,
        x: torch.Tensor,
        output: str = "tokens",
        layer: int = -1,
        include_class_token: bool = False,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, ...] | dict[str, torch.Tensor | tuple[torch.Tensor, ...]]:
        """Patch-token features for multimodal models: every patch (SigLIP has no class token).

        ``output="tokens"``: the hidden state after block ``layer`` (Hugging Face indexing: 0 = the embeddings,
        -1 = the last block, before ``ln_post``), ``[N, g*g, D]``; ``"hidden_states"``: all ``layers + 1`` of them;
        ``"last_hidden_state"``: the last block's output after ``ln_post`` (HF ``last_hidden_state``).
        """
        del include_class_token  # no class token to include
        hidden: list[torch.Tensor] = []
        emb = self.embed(x)
        hidden.append(emb)
        n_layers = len(self.transformer.resblocks)
        index = layer if layer >= 0 else n_layers + 1 + layer
        if output == "tokens" and not 0 <= index <= n_layers:
            raise ValueError(
                f"layer {layer} out of range for a {n_layers}-layer vision tower (0..{n_layers} or -1..-{n_layers + 1})"
            )
        stop = index if output == "tokens" and not return_attention else None
        self.transformer(emb, hidden_states=hidden, stop_at=stop)
        if output == "tokens":
            result: torch.Tensor | tuple[torch.Tensor, ...] = hidden[index]
        elif output == "hidden_states":
            result = tuple(hidden)
        elif output == "last_hidden_state":
            result = self.ln_post(hidden[-1])
        else:
            raise ValueError(f"output must be 'embedding', 'tokens', 'hidden_states' or 'last_hidden_state', not {output!r}")
        if return_attention:
            last = self.transformer.resblocks[-1]
            return {"features": result, "attention": last.attn.attention_weights(last.ln_1(hidden[-2]))}
        return result

    def from_patches(self, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor | None = None,
                     spatial_shapes: torch.Tensor | None = None) -> torch.Tensor:
        """Hugging Face Siglip2 NaFlex inputs -> pixels ``[N, 3, H, W]`` for the fixed grid (the only one supported).

        ``pixel_values`` ``[N, L, p*p*3]`` holds each patch in (row, column, channel) order; every image must use
        the model's whole grid (``spatial_shapes`` = (g, g), mask all ones). Other grids are refused in one line.
        """
        n, length, dim = pixel_values.shape
        p, g = self.patch_size, self.grid_size
        if dim != p * p * 3 or length != g * g:
            raise ValueError(f"NaFlex pixel_values {tuple(pixel_values.shape)}: expected [N, {g * g}, {p * p * 3}] "
                             f"(the fixed {g}x{g} grid of {p}-pixel patches); other grids are not supported")
        if spatial_shapes is not None and not bool((spatial_shapes == g).all()):
            shapes = sorted({tuple(s) for s in spatial_shapes.tolist()})
            raise ValueError(f"NaFlex spatial_shapes {shapes}: only the fixed grid ({g}, {g}) is supported; "
                             f"resize images to {self.image_size}x{self.image_size} (kontrast's preprocess does)")
        if pixel_attention_mask is not None and not bool(pixel_attention_mask.bool().all()):
            raise ValueError("NaFlex pixel_attention_mask has padded patches: only full fixed-grid images are supported")
        # [N, g*g, p*p*3] -> [N, g, g, p, p, 3] -> [N, 3, g, p, g, p] -> [N, 3, g*p, g*p]
        x = pixel_values.reshape(n, g, g, p, p, 3).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(n, 3, g * p, g * p)


class SigLIPTextTransformer(nn.Module):
    """SigLIP text tower: bidirectional blocks, last-position pooling, projection with bias."""

    def __init__(self, vocab_size: int, context_length: int, width: int, heads: int, layers: int, output_dim: int,
                 mlp_ratio: float = 4.0, act: str = "gelu", eps: float = 1e-6) -> None:
        super().__init__()
        self.context_length, self.vocab_size = context_length, vocab_size
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.zeros(context_length, width))
        self.transformer = Transformer(width, layers, heads, mlp_ratio, act, eps)
        self.ln_final = nn.LayerNorm(width, eps=eps)
        self.text_projection = nn.Linear(width, output_dim, bias=True)

    def init_weights(self) -> None:
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.transformer.init_weights()
        nn.init.normal_(self.text_projection.weight, std=self.transformer.width**-0.5)
        nn.init.zeros_(self.text_projection.bias)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """``[N, L] -> [N, L, W]``: token plus position embeddings."""
        if ids.shape[1] > self.context_length:
            raise ValueError(f"{ids.shape[1]} tokens exceed the context length {self.context_length}")
        x = self.token_embedding(ids)
        return x + self.positional_embedding[: ids.shape[1]].to(x.dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Text embeddings ``[N, E]`` read at the last position (the last block computes that row only)."""
        x = self.embed(ids)
        if tracing() or not x.shape[0]:
            pooled = self.transformer(x)[:, -1]
        else:
            pooled = self.transformer.forward_pooled(x, x.shape[1] - 1)  # [N, L, W] -> [N, W]
        return linear(self.ln_final(pooled), self.text_projection)

    def forward_features(self, ids: torch.Tensor, output: str = "tokens", layer: int = -1) -> torch.Tensor | tuple:
        """Token features: ``"tokens"`` after block ``layer`` (0 = embeddings), ``"hidden_states"`` all of them,
        ``"last_hidden_state"`` the last block after ``ln_final`` (HF ``last_hidden_state``)."""
        check_feature_output(output)
        index = hidden_state_index(layer, len(self.transformer.resblocks), "text") if output == "tokens" else None
        hidden = [self.embed(ids)]
        self.transformer(hidden[0], hidden_states=hidden, stop_at=index)
        if output == "tokens":
            return hidden[index]
        if output == "hidden_states":
            return tuple(hidden)
        return self.ln_final(hidden[-1])


def grid_from_positions(rows: int) -> int:
    """Side of the square patch grid with ``rows`` position embeddings; ``ValueError`` if not a square."""
    grid = round(math.sqrt(rows))
    if grid * grid != rows:
        raise ValueError(f"{rows} position embeddings are not a square grid")
    return grid


@dataclass
class SigLIPTowerConfig:
    """One tower's architecture (``mlp_hidden`` is the MLP width; heads are explicit, never width/64 by default)."""

    width: int
    layers: int
    heads: int
    mlp_hidden: int
    act: str = "gelu"  # "gelu" (exact, timm / open_clip SigLIP) or "gelu_tanh" (HF, SigLIP 2 text)
    ln_eps: float = 1e-6


@dataclass
class SigLIPConfig:
    """A SigLIP / SigLIP 2 model: image tower (patch grid), text tower (vocabulary, context), temperature and bias."""

    vision: SigLIPTowerConfig
    text: SigLIPTowerConfig
    image_size: int
    patch_size: int
    vocab_size: int
    context_length: int = 64
    embed_dim: int | None = None  # text projection width; the image tower's width (no image projection)
    init_logit_scale: float = math.log(10.0)
    init_logit_bias: float = -10.0
    naflex: bool = False  # weights come from a Siglip2Model (NaFlex patch embedding) and are written back so

    name: str | None = None  # a label (not architecture), as ``ModelConfig.name``

    @property
    def extra(self) -> dict:
        """Keys outside the architecture (none): the interface ``api.fingerprint`` reads."""
        return {}

    def to_dict(self) -> dict:
        """A plain dict of the whole config (``api.fingerprint`` hashes it with the weights)."""
        return {"family": "siglip", **asdict(self)}

    def tower_summary(self) -> tuple[str, str]:
        """One line per tower, for reports."""
        v, t = self.vision, self.text
        return (f"SigLIP ViT {v.layers} layers, width {v.width}, patch {self.patch_size}, attention-pool head",
                f"SigLIP Transformer {t.layers} layers, width {t.width}, bidirectional, last-token pooling")

    @classmethod
    def from_dict(cls, d: dict, source: str = "model config") -> SigLIPConfig:
        """``to_dict``'s layout back (unknown keys refused in one line naming them and ``source``)."""
        from dataclasses import fields

        from ..errors import ConfigError

        d = dict(d)
        d.pop("family", None)
        towers = {}
        for key in ("vision", "text"):
            tower = d.pop(key, None)
            names = {f.name for f in fields(SigLIPTowerConfig)}
            if not isinstance(tower, dict) or set(tower) - names:
                bad = min(set(tower) - names) if isinstance(tower, dict) else tower
                raise ConfigError(f"{source}: SigLIP {key} tower config: unknown key or value {bad!r}")
            towers[key] = SigLIPTowerConfig(**tower)
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"{source}: SigLIP config: unknown key {min(unknown)!r}")
        return cls(vision=towers["vision"], text=towers["text"], **d)

    def __post_init__(self) -> None:
        if self.embed_dim is None:
            self.embed_dim = self.vision.width
        if self.embed_dim != self.vision.width:
            raise ValueError(f"SigLIP's joint space is the image tower's width ({self.vision.width}), "
                             f"not embed_dim {self.embed_dim}")


class SigLIP(LocateMixin, nn.Module):
    """SigLIP model: ``visual`` and ``text`` towers, ``logit_scale`` (log space) and ``logit_bias``.

    Probabilities are ``sigmoid(exp(logit_scale) * cos + logit_bias)`` per (image, text) pair, not a softmax.
    """

    sigmoid = True  # probabilities are per pair (see ``get_logits``)

    def __init__(self, cfg: SigLIPConfig | ModelRecord) -> None:
        super().__init__()
        self.record = cfg if isinstance(cfg, ModelRecord) else ModelRecord.default(cfg)  # see kontrast.record
        cfg = self.record.arch
        v, t = cfg.vision, cfg.text
        self.visual = SigLIPVisionTransformer(cfg.image_size, cfg.patch_size, v.width, v.layers, v.heads,
                                              mlp_ratio_for(v.mlp_hidden, v.width), v.act, v.ln_eps)
        self.text = SigLIPTextTransformer(cfg.vocab_size, cfg.context_length, t.width, t.heads, t.layers,
                                          int(cfg.embed_dim), mlp_ratio_for(t.mlp_hidden, t.width), t.act, t.ln_eps)
        self.context_length = cfg.context_length
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))
        self.logit_bias = nn.Parameter(torch.tensor(float(cfg.init_logit_bias)))

    def init_weights(self) -> None:
        self.visual.init_weights()
        self.text.init_weights()

    @property
    def config(self) -> SigLIPConfig:
        """The architecture (``record.arch``)."""
        return self.record.arch

    @config.setter
    def config(self, cfg: SigLIPConfig) -> None:
        self.record.arch = cfg

    @property
    def image_size(self) -> int:
        return self.visual.image_size

    @property
    def embed_dim(self) -> int:
        return int(self.config.embed_dim)

    def encode_image(self, images: torch.Tensor, normalize: bool = False, output: str = "embedding", layer: int = -1,
                     include_class_token: bool = False, return_attention: bool = False):
        """Image embeddings ``[N, E]``; ``output="tokens" | "hidden_states" | "last_hidden_state"`` gives patch tokens."""
        if output != "embedding":
            return self.visual.forward_features(images, output, layer, include_class_token, return_attention)
        features = self.visual(images)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, ids: torch.Tensor, normalize: bool = False, output: str = "embedding", layer: int = -1):
        """Text embeddings ``[N, E]`` (ids padded to the context length); ``output="tokens" | "hidden_states"``
        gives token features (``layer`` as for images: 0 = embeddings, -1 = last block, -2 = penultimate)."""
        if output != "embedding":
            return self.text.forward_features(ids, output, layer)
        features = self.text(ids)
        return F.normalize(features, dim=-1) if normalize else features

    def get_logits(self, images: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits_per_image [N, M], logits_per_text [M, N])`` = ``exp(logit_scale) * cos + logit_bias``."""
        logits = self.logit_scale.exp() * self.encode_image(images, normalize=True) @ self.encode_text(ids, normalize=True).T
        logits = logits + self.logit_bias
        return logits, logits.T

    def forward(self, images: torch.Tensor | None = None, ids: torch.Tensor | None = None):
        """``(image_features, text_features, logit_scale.exp(), logit_bias)`` normalised (open_clip's SigLIP output)."""
        image_features = self.encode_image(images, normalize=True) if images is not None else None
        text_features = self.encode_text(ids, normalize=True) if ids is not None else None
        return image_features, text_features, self.logit_scale.exp(), self.logit_bias
