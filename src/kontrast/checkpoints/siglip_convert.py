"""Pure state-dict converters for SigLIP / SigLIP 2: open_clip (timm trunk) and Hugging Face <-> kontrast names.

kontrast's SigLIP names (``models/siglip.py``): image tower under ``visual.`` with OpenAI-style names
(``conv1``, ``positional_embedding`` [g*g, D], ``transformer.resblocks.N.{ln_1, attn.in_proj_*, attn.out_proj,
ln_2, mlp.c_fc, mlp.c_proj}``, ``ln_post``, ``attn_pool.{probe, attn.in_proj_*, attn.out_proj, ln, mlp.*}``); text
tower under ``text.`` exactly as open_clip's ``TextTransformer`` names it (``token_embedding``,
``positional_embedding``, ``transformer.resblocks.N.*``, ``ln_final``, ``text_projection.{weight,bias}``);
``logit_scale`` and ``logit_bias`` as 0-dim tensors.

Every converter keeps tensors it does not know under their own name, so a strict load names them.
"""

from __future__ import annotations

import re

import torch

# timm ViT block names -> kontrast block names (relative to the block prefix)
_TIMM_BLOCK = [("norm1", "ln_1"), ("attn.qkv", "attn.in_proj"), ("attn.proj", "attn.out_proj"), ("norm2", "ln_2"),
               ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")]
# HF Siglip encoder-layer names -> kontrast block names (q/k/v are merged separately)
_HF_BLOCK = [("layer_norm1", "ln_1"), ("self_attn.out_proj", "attn.out_proj"), ("layer_norm2", "ln_2"),
             ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")]
_HF_IGNORED = re.compile(r".*(position_ids)$")


def _split_suffix(name: str) -> tuple[str, str]:
    stem, _, part = name.rpartition(".")
    return stem, part


# ---- open_clip (timm trunk) -----------------------------------------------------------------------------
def open_clip_to_kontrast(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip SigLIP (``visual.trunk.*`` timm names, ``text.*``) -> kontrast SigLIP names."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if not key.startswith("visual.trunk."):
            out[key] = value  # text.*, logit_scale, logit_bias: same names; anything else is reported by the load
            continue
        name = key[len("visual.trunk."):]
        new = _timm_name(name)
        if new == "pos_embed":
            out["visual.positional_embedding"] = value.reshape(value.shape[-2], value.shape[-1])  # [1, L, D] -> [L, D]
        elif new in ("attn_pool.q.weight", "attn_pool.q.bias", "attn_pool.kv.weight", "attn_pool.kv.bias"):
            continue  # merged below
        elif new is None:
            out[key] = value
        else:
            out[f"visual.{new}"] = value
    for part in ("weight", "bias"):
        q, kv = sd.get(f"visual.trunk.attn_pool.q.{part}"), sd.get(f"visual.trunk.attn_pool.kv.{part}")
        if q is not None and kv is not None:
            out[f"visual.attn_pool.attn.in_proj_{part}"] = torch.cat([q, kv], dim=0)
        else:
            for name, t in (("q", q), ("kv", kv)):
                if t is not None:
                    out[f"visual.trunk.attn_pool.{name}.{part}"] = t
    return out


def _timm_name(name: str) -> str | None:
    """kontrast name (under ``visual.``) of one timm trunk tensor; ``None`` for tensors kontrast does not have."""
    fixed = {"patch_embed.proj.weight": "conv1.weight", "patch_embed.proj.bias": "conv1.bias", "pos_embed": "pos_embed",
             "norm.weight": "ln_post.weight", "norm.bias": "ln_post.bias", "attn_pool.latent": "attn_pool.probe",
             "attn_pool.proj.weight": "attn_pool.attn.out_proj.weight", "attn_pool.proj.bias": "attn_pool.attn.out_proj.bias",
             "attn_pool.norm.weight": "attn_pool.ln.weight", "attn_pool.norm.bias": "attn_pool.ln.bias",
             "attn_pool.mlp.fc1.weight": "attn_pool.mlp.c_fc.weight", "attn_pool.mlp.fc1.bias": "attn_pool.mlp.c_fc.bias",
             "attn_pool.mlp.fc2.weight": "attn_pool.mlp.c_proj.weight", "attn_pool.mlp.fc2.bias": "attn_pool.mlp.c_proj.bias"}
    if name in fixed:
        return fixed[name]
    if name.startswith(("attn_pool.q.", "attn_pool.kv.")):
        return name
    m = re.match(r"blocks\.(\d+)\.(.+)$", name)
    if m:
        stem, part = _split_suffix(m.group(2))
        for timm, ours in _TIMM_BLOCK:
            if stem == timm:
                if ours == "attn.in_proj":
                    return f"transformer.resblocks.{m.group(1)}.attn.in_proj_{part}"
                return f"transformer.resblocks.{m.group(1)}.{ours}.{part}"
    return None


def kontrast_to_open_clip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """kontrast SigLIP names -> open_clip's (timm trunk ``visual.trunk.*``, ``text.*``)."""
    inverse = {ours: timm for timm, ours in _TIMM_BLOCK}
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if not key.startswith("visual."):
            out[key] = value
            continue
        name = key[len("visual."):]
        m = re.match(r"transformer\.resblocks\.(\d+)\.(.+)$", name)
        if name == "positional_embedding":
            out["visual.trunk.pos_embed"] = value.unsqueeze(0)  # [L, D] -> [1, L, D]
        elif name.startswith("attn_pool.attn.in_proj_"):
            part = name.rsplit("_", 1)[1]
            width = value.shape[0] // 3
            out[f"visual.trunk.attn_pool.q.{part}"] = value[:width].clone()
            out[f"visual.trunk.attn_pool.kv.{part}"] = value[width:].clone()
        elif m:
            block, rest = m.group(1), m.group(2)
            if rest.startswith("attn.in_proj_"):
                out[f"visual.trunk.blocks.{block}.attn.qkv.{rest.rsplit('_', 1)[1]}"] = value
            else:
                stem, part = _split_suffix(rest)
                out[f"visual.trunk.blocks.{block}.{inverse[stem]}.{part}"] = value
        else:
            reverse = {"conv1.weight": "patch_embed.proj.weight", "conv1.bias": "patch_embed.proj.bias",
                       "ln_post.weight": "norm.weight", "ln_post.bias": "norm.bias", "attn_pool.probe": "attn_pool.latent",
                       "attn_pool.attn.out_proj.weight": "attn_pool.proj.weight",
                       "attn_pool.attn.out_proj.bias": "attn_pool.proj.bias",
                       "attn_pool.ln.weight": "attn_pool.norm.weight", "attn_pool.ln.bias": "attn_pool.norm.bias",
                       "attn_pool.mlp.c_fc.weight": "attn_pool.mlp.fc1.weight", "attn_pool.mlp.c_fc.bias": "attn_pool.mlp.fc1.bias",
                       "attn_pool.mlp.c_proj.weight": "attn_pool.mlp.fc2.weight",
                       "attn_pool.mlp.c_proj.bias": "attn_pool.mlp.fc2.bias"}
            out[f"visual.trunk.{reverse[name]}"] = value
    return out


# ---- Hugging Face SiglipModel / Siglip2Model ----------------------------------------------------------------
def hf_to_kontrast(sd: dict[str, torch.Tensor], patch_size: int | None = None) -> dict[str, torch.Tensor]:
    """HF ``SiglipModel`` / ``Siglip2Model`` state dict -> kontrast SigLIP names.

    Siglip2's patch embedding is a Linear over patches in (row, column, channel) order; it becomes the equivalent
    convolution ``[D, 3, p, p]`` (``patch_size`` is needed for that one tensor).
    """
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(src: str, dst: str, fn=None) -> None:
        if src in sd:
            out[dst] = fn(sd[src]) if fn else sd[src]
            used.add(src)

    v, t = "vision_model.", "text_model."
    for part in ("weight", "bias"):
        take(f"{v}embeddings.patch_embedding.{part}", f"visual.conv1.{part}",
             (lambda w: _linear_to_conv(w, patch_size)) if part == "weight" else None)
        take(f"{v}post_layernorm.{part}", f"visual.ln_post.{part}")
        take(f"{v}head.attention.in_proj_{part}", f"visual.attn_pool.attn.in_proj_{part}")
        take(f"{v}head.attention.out_proj.{part}", f"visual.attn_pool.attn.out_proj.{part}")
        take(f"{v}head.layernorm.{part}", f"visual.attn_pool.ln.{part}")
        take(f"{v}head.mlp.fc1.{part}", f"visual.attn_pool.mlp.c_fc.{part}")
        take(f"{v}head.mlp.fc2.{part}", f"visual.attn_pool.mlp.c_proj.{part}")
        take(f"{t}final_layer_norm.{part}", f"text.ln_final.{part}")
        take(f"{t}head.{part}", f"text.text_projection.{part}")
    take(f"{v}embeddings.position_embedding.weight", "visual.positional_embedding")
    take(f"{v}head.probe", "visual.attn_pool.probe")
    take(f"{t}embeddings.token_embedding.weight", "text.token_embedding.weight")
    take(f"{t}embeddings.position_embedding.weight", "text.positional_embedding")
    take("logit_scale", "logit_scale", lambda x: x.reshape(()))
    take("logit_bias", "logit_bias", lambda x: x.reshape(()))
    for hf_prefix, ours in ((f"{v}encoder.layers", "visual.transformer.resblocks"),
                            (f"{t}encoder.layers", "text.transformer.resblocks")):
        pattern = re.compile(re.escape(hf_prefix) + r"\.(\d+)\.")
        for i in sorted({int(m.group(1)) for k in sd for m in [pattern.match(k)] if m}):
            src, dst = f"{hf_prefix}.{i}.", f"{ours}.{i}."
            for part in ("weight", "bias"):
                names = [f"{src}self_attn.{n}_proj.{part}" for n in ("q", "k", "v")]
                if all(n in sd for n in names):
                    out[f"{dst}attn.in_proj_{part}"] = torch.cat([sd[n] for n in names], dim=0)
                    used.update(names)
                for hf_name, our_name in _HF_BLOCK:
                    take(f"{src}{hf_name}.{part}", f"{dst}{our_name}.{part}")
    for key, value in sd.items():
        if key not in used and not _HF_IGNORED.match(key):
            out[key] = value  # reported by the strict load
    return out


def _linear_to_conv(weight: torch.Tensor, patch_size: int | None) -> torch.Tensor:
    if weight.dim() == 4:
        return weight  # Siglip: already a convolution
    if patch_size is None:
        raise ValueError("a Siglip2 patch embedding needs the patch size to become a convolution")
    dim = weight.shape[0]
    # [D, p*p*3] -> [D, p, p, 3] -> [D, 3, p, p]
    return weight.reshape(dim, patch_size, patch_size, 3).permute(0, 3, 1, 2).contiguous()


def kontrast_to_hf(sd: dict[str, torch.Tensor], naflex: bool = False) -> dict[str, torch.Tensor]:
    """kontrast SigLIP names -> HF ``SiglipModel`` (or ``Siglip2Model`` with ``naflex=True``) state dict."""
    out: dict[str, torch.Tensor] = {}
    v, t = "vision_model.", "text_model."
    simple = {"visual.ln_post": f"{v}post_layernorm", "visual.attn_pool.attn.out_proj": f"{v}head.attention.out_proj",
              "visual.attn_pool.ln": f"{v}head.layernorm", "visual.attn_pool.mlp.c_fc": f"{v}head.mlp.fc1",
              "visual.attn_pool.mlp.c_proj": f"{v}head.mlp.fc2", "text.ln_final": f"{t}final_layer_norm",
              "text.text_projection": f"{t}head", "visual.conv1": f"{v}embeddings.patch_embedding"}
    inverse_block = {ours: hf for hf, ours in _HF_BLOCK}
    for key, value in sd.items():
        stem, part = _split_suffix(key)
        m = re.match(r"(visual|text)\.transformer\.resblocks\.(\d+)\.(.+)$", key)
        if m:
            prefix = f"{v if m.group(1) == 'visual' else t}encoder.layers.{m.group(2)}."
            rest_stem, rest_part = _split_suffix(m.group(3))
            if m.group(3).startswith("attn.in_proj_"):
                for name, chunk in zip(("q", "k", "v"), value.chunk(3, dim=0)):
                    out[f"{prefix}self_attn.{name}_proj.{m.group(3).rsplit('_', 1)[1]}"] = chunk.contiguous()
            else:
                out[f"{prefix}{inverse_block[rest_stem]}.{rest_part}"] = value
        elif key == "visual.conv1.weight" and naflex:
            # [D, 3, p, p] -> [D, p, p, 3] -> [D, p*p*3]
            out[f"{v}embeddings.patch_embedding.weight"] = value.permute(0, 2, 3, 1).reshape(value.shape[0], -1).contiguous()
        elif stem in simple:
            out[f"{simple[stem]}.{part}"] = value
        elif key.startswith("visual.attn_pool.attn.in_proj_"):
            out[f"{v}head.attention.in_proj_{key.rsplit('_', 1)[1]}"] = value
        elif key == "visual.attn_pool.probe":
            out[f"{v}head.probe"] = value
        elif key == "visual.positional_embedding":
            out[f"{v}embeddings.position_embedding.weight"] = value
        elif key == "text.token_embedding.weight":
            out[f"{t}embeddings.token_embedding.weight"] = value
        elif key == "text.positional_embedding":
            out[f"{t}embeddings.position_embedding.weight"] = value
        elif key in ("logit_scale", "logit_bias"):
            out[key] = value.reshape(1)
        else:
            raise ValueError(f"tensor {key!r} has no place in a Hugging Face Siglip model")
    return out
