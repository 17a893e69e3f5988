"""The CLIP model: an image tower and a text tower projected into one space, and a learnable temperature.

Parameter names follow OpenAI's checkpoints (``visual.*``, ``token_embedding``, ``positional_embedding``,
``transformer.*``, ``ln_final``, ``text_projection``, ``logit_scale``), so official state dicts load as is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..record import ModelRecord
from .layers import Transformer, check_feature_output, hidden_state_index, tracing
from .locating import LocateMixin
from .resnet import ModifiedResNet
from .vit import VisionTransformer


def build_visual(cfg: ModelConfig) -> nn.Module:
    """The image tower of ``cfg.vision.kind`` (a new kind adds its branch here; see ``kontrast.config``)."""
    v = cfg.vision
    if v.kind == "resnet":
        layers = tuple(v.layers) if isinstance(v.layers, (list, tuple)) else (v.layers,) * 4
        return ModifiedResNet(layers, cfg.embed_dim, v.heads, v.image_size, v.width)
    if v.kind == "vit":
        return VisionTransformer(
            v.image_size, int(v.patch_size), v.width, int(v.layers), v.heads, cfg.embed_dim, v.mlp_ratio, v.act,
            v.ln_eps, v.pool_type, v.final_ln_after_pool, v.no_ln_pre,
        )
    if v.kind == "convnext":
        from .convnext import ConvNeXtTower

        return ConvNeXtTower(v.convnext, cfg.embed_dim, v.image_size, v.timm_proj, v.timm_proj_bias)
    if v.kind == "efficientnet_lite":
        from .efficientnet_lite import EfficientNetLiteTower

        return EfficientNetLiteTower(str(v.timm_model_name), cfg.embed_dim, v.image_size, v.timm_proj,
                                     v.timm_proj_bias)
    raise ValueError(f"no image tower of kind {v.kind!r}")


class CLIP(LocateMixin, nn.Module):
    """``encode_image`` / ``encode_text`` give unnormalised embeddings; ``forward`` gives open_clip's triple.

    ``record`` (``kontrast.record.ModelRecord``) says what the model is: ``config`` (the architecture) is
    ``record.arch``, and the record's preprocessing and tokenizer config travel with the model.
    """

    def __init__(self, cfg: ModelConfig | ModelRecord) -> None:
        super().__init__()
        self.record = cfg if isinstance(cfg, ModelRecord) else ModelRecord.default(cfg)
        cfg = self.record.arch
        self.visual = build_visual(cfg)
        self.build_text_tower(cfg)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))
        if cfg.init_logit_bias is not None:
            self.logit_bias = nn.Parameter(torch.tensor(float(cfg.init_logit_bias)))
        else:
            self.logit_bias = None
        self.init_weights()

    def build_text_tower(self, cfg: ModelConfig) -> None:
        """The text tower's modules under OpenAI's names (or ``text``: a Hugging Face encoder)."""
        t = cfg.text
        self.context_length = t.context_length
        if t.kind == "hf":
            from .hf_text import HFTextEncoder

            self.text = HFTextEncoder(t.hf_model, cfg.embed_dim, t.hf_pooler, t.hf_proj)
        else:
            self.vocab_size = t.vocab_size
            self.token_embedding = nn.Embedding(t.vocab_size, t.width)
            self.positional_embedding = nn.Parameter(torch.empty(t.context_length, t.width))
            self.transformer = Transformer(t.width, t.layers, t.heads, t.mlp_ratio, t.act, t.ln_eps)
            self.ln_final = nn.LayerNorm(t.width, eps=t.ln_eps)
            self.text_projection = nn.Parameter(torch.empty(t.width, cfg.embed_dim))

    # ---- initialisation ----------------------------------------------------------------
    def init_weights(self) -> None:
        """open_clip's initialisation, for training from scratch."""
        self.visual.init_weights()
        self.init_text_weights()

    def init_text_weights(self) -> None:
        """open_clip's initialisation of a CLIP text tower (a Hugging Face encoder keeps its weights)."""
        if self.config.text.kind == "clip":
            nn.init.normal_(self.token_embedding.weight, std=0.02)
            nn.init.normal_(self.positional_embedding, std=0.01)
            self.transformer.init_weights()
            nn.init.normal_(self.text_projection, std=self.transformer.width**-0.5)

    # ---- properties ----------------------------------------------------------------------
    @property
    def config(self) -> ModelConfig:
        """The architecture (``record.arch``)."""
        return self.record.arch

    @config.setter
    def config(self, cfg: ModelConfig) -> None:
        self.record.arch = cfg

    @property
    def sigmoid(self) -> bool:
        """Whether zero-shot probabilities are a sigmoid per label (a model trained with the SigLIP loss: it has a
        ``logit_bias``) rather than a softmax over the labels (see ``kontrast.zeroshot.probabilities``)."""
        return self.logit_bias is not None

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

    def text_pool_index(self, ids: torch.Tensor) -> int | torch.Tensor:
        """Position each text is read at (``config.text.pool_type``): the largest id (OpenAI's end-of-text
        49407), the first ``eos_id``, the first or the last position."""
        t = self.config.text
        if t.pool_type == "argmax":
            return ids.argmax(dim=-1)
        if t.pool_type == "eos":
            return (ids == t.eos_id).int().argmax(dim=-1)  # first eos id; 0 when a row has none (open_clip)
        return 0 if t.pool_type == "first" else ids.shape[1] - 1

    def encode_text(self, ids: torch.Tensor, normalize: bool = False, output: str = "embedding", layer: int = -1):
        """Text embeddings ``[N, E]`` from token ids ``[N, L]``, read at ``text_pool_index``.

        ``output="tokens"`` / ``"hidden_states"`` / ``"last_hidden_state"`` return token features instead (see
        ``text_features``), e.g. the penultimate layer diffusion pipelines condition on (``layer=-2``).
        """
        if output != "embedding":
            return self.text_features(ids, output, layer)
        t = self.config.text
        if t.kind == "hf":
            features = self.text(ids)
        else:
            index = self.text_pool_index(ids)
            causal = not t.no_causal_mask
            if causal and t.pool_type != "last" and ids.shape[0] and not tracing():
                # causal attention: positions after the last pooled one never reach a pooled row
                last = index if isinstance(index, int) else int(index.max())
                ids = ids[:, : last + 1]  # [N, L] -> [N, L']
            x = self.token_embedding(ids)  # [N, L, W]
            x = x + self.positional_embedding[: ids.shape[1]].to(x.dtype)
            x = self.transformer.forward_pooled(x, index, causal=causal)  # [N, L, W] -> [N, W] at the pooled rows
            features = self.ln_final(x) @ self.text_projection
        return F.normalize(features, dim=-1) if normalize else features

    def text_features(self, ids: torch.Tensor, output: str = "tokens", layer: int = -1) -> torch.Tensor | tuple:
        """Per-token text features ``[N, L, W]``, indexed as Hugging Face's ``CLIPTextModel`` ``hidden_states``.

        ``"tokens"``: the hidden state after block ``layer`` (0 = token + position embeddings, -1 = the last block,
        -2 = the penultimate; no final LayerNorm); ``"hidden_states"``: all ``layers + 1`` of them;
        ``"last_hidden_state"``: the last block's output after ``ln_final`` (HF ``last_hidden_state``). Every position
        is computed (no cut after the end-of-text token) with the tower's own attention mask (causal for CLIP).
        A Hugging Face text tower (``hf_model``) returns its encoder's own ``hidden_states`` (see ``HFTextEncoder``).
        """
        if self.config.text.kind == "hf":
            return self.text.forward_features(ids, output, layer)
        check_feature_output(output)
        n_layers = len(self.transformer.resblocks)
        index = hidden_state_index(layer, n_layers, "text") if output == "tokens" else None
        x = self.token_embedding(ids)  # [N, L, W]
        hidden = [x + self.positional_embedding[: ids.shape[1]].to(x.dtype)]
        self.transformer(hidden[0], causal=not self.config.text.no_causal_mask, hidden_states=hidden, stop_at=index)
        if output == "tokens":
            return hidden[index]
        if output == "hidden_states":
            return tuple(hidden)
        return self.ln_final(hidden[-1])

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
