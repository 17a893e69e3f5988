"""The CLIP model: an image tower and a text tower projected into one space, and a learnable temperature.

Parameter names follow OpenAI's checkpoints (``visual.*``, ``token_embedding``, ``positional_embedding``,
``transformer.*``, ``ln_final``, ``text_projection``, ``logit_scale``), so official state dicts load as is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .layers import Transformer, tracing
from .resnet import ModifiedResNet
from .vit import VisionTransformer


def build_visual(cfg: ModelConfig) -> nn.Module:
    v = cfg.vision
    if v.is_resnet:
        layers = tuple(v.layers) if isinstance(v.layers, (list, tuple)) else (v.layers,) * 4
        return ModifiedResNet(layers, cfg.embed_dim, v.heads, v.image_size, v.width)
    return VisionTransformer(
        v.image_size, int(v.patch_size), v.width, int(v.layers), v.heads, cfg.embed_dim, v.mlp_ratio, v.act, v.ln_eps
    )


class CLIP(nn.Module):
    """``encode_image`` / ``encode_text`` give unnormalised embeddings; ``forward`` gives open_clip's triple."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.visual = build_visual(cfg)
        t = cfg.text
        self.context_length = t.context_length
        if t.hf_model:
            from .hf_text import HFTextEncoder

            self.text = HFTextEncoder(t.hf_model, cfg.embed_dim, t.hf_pooler, t.hf_proj)
        else:
            self.vocab_size = t.vocab_size
            self.token_embedding = nn.Embedding(t.vocab_size, t.width)
            self.positional_embedding = nn.Parameter(torch.empty(t.context_length, t.width))
            self.transformer = Transformer(t.width, t.layers, t.heads, t.mlp_ratio, t.act, t.ln_eps)
            self.ln_final = nn.LayerNorm(t.width, eps=t.ln_eps)
            self.text_projection = nn.Parameter(torch.empty(t.width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))
        if cfg.init_logit_bias is not None:
            self.logit_bias = nn.Parameter(torch.tensor(float(cfg.init_logit_bias)))
        else:
            self.logit_bias = None
        self.init_weights()

    # ---- initialisation ----------------------------------------------------------------
    def init_weights(self) -> None:
        """open_clip's initialisation, for training from scratch."""
        self.visual.init_weights()
        if not self.config.text.hf_model:
            nn.init.normal_(self.token_embedding.weight, std=0.02)
            nn.init.normal_(self.positional_embedding, std=0.01)
            self.transformer.init_weights()
            nn.init.normal_(self.text_projection, std=self.transformer.width**-0.5)

    # ---- properties ----------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return next(self.visual.parameters()).dtype

    @property
    def image_size(self) -> int:
        return self.visual.image_size

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for module in self.modules():
            if isinstance(module, Transformer):
                module.grad_checkpointing = enable

    # ---- towers --------------------------------------------------------------------------------
    def encode_image(
        self,
        images: torch.Tensor,
        normalize: bool = False,
        output: str = "embedding",
        layer: int = -1,
        include_class_token: bool = False,
        return_attention: bool = False,
    ):
        """Image embeddings ``[N, E]`` from pixels ``[N, 3, H, W]``; ``normalize=True`` gives unit rows.

        ``output="tokens"`` / ``"hidden_states"`` return token features instead (see
        ``VisionTransformer.forward_features``), for multimodal models.
        """
        if output != "embedding":
            return self.visual.forward_features(images, output, layer, include_class_token, return_attention)
        features = self.visual(images)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Text embeddings ``[N, E]`` from token ids ``[N, L]``, read at the end-of-text token."""
        if self.config.text.hf_model:
            features = self.text(ids)
        else:
            eot = ids.argmax(dim=-1)  # the end-of-text id 49407 is the largest id
            if ids.shape[0] and not tracing():
                # causal attention: positions after the last end-of-text token never reach a pooled row
                ids = ids[:, : int(eot.max()) + 1]  # [N, L] -> [N, L']
            x = self.token_embedding(ids)  # [N, L, W]
            x = x + self.positional_embedding[: ids.shape[1]].to(x.dtype)
            x = self.transformer.forward_pooled(x, eot, causal=True)  # [N, L, W] -> [N, W] at the EOT tokens
            features = self.ln_final(x) @ self.text_projection
        return F.normalize(features, dim=-1) if normalize else features

    def get_logits(self, images: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits_per_image [N, M], logits_per_text [M, N])`` scaled by ``exp(logit_scale)``."""
        image_features = self.encode_image(images, normalize=True)
        text_features = self.encode_text(ids, normalize=True)
        logits = self.logit_scale.exp() * image_features @ text_features.T
        if self.logit_bias is not None:
            logits = logits + self.logit_bias
        return logits, logits.T

    def forward(self, images: torch.Tensor | None = None, ids: torch.Tensor | None = None):
        """``(image_features, text_features, logit_scale.exp())`` with normalised features (open_clip)."""
        image_features = self.encode_image(images, normalize=True) if images is not None else None
        text_features = self.encode_text(ids, normalize=True) if ids is not None else None
        return image_features, text_features, self.logit_scale.exp()
