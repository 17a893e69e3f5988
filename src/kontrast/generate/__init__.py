"""CLIP-guided image generation: optimise an image (pixels, Fourier spectrum or VQGAN latent) so that
CLIP embeds it close to weighted text prompts. ``generate(model, tokenizer, ["a red heart"])``."""

from .objective import ClipObjective, Cutouts, Prompt, parse_prompt, similarity_matrix, spherical_dist
from .params import PARAMETERISATIONS, FourierImage, ImageParam, PixelImage, VQGANImage, make_param
from .run import (
                  GenerateConfig,
                  GenerateResult,
                  StepInfo,
                  encode_prompts,
                  generate,
                  load_init_image,
                  save_frames,
                  save_gif,
                  to_pil,
)
from .vqgan import VQGANConfig, VQGANDecoder, load_vqgan

__all__ = [
                  "PARAMETERISATIONS",
                  "ClipObjective",
                  "Cutouts",
                  "FourierImage",
                  "GenerateConfig",
                  "GenerateResult",
                  "ImageParam",
                  "PixelImage",
                  "Prompt",
                  "StepInfo",
                  "VQGANConfig",
                  "VQGANDecoder",
                  "VQGANImage",
                  "encode_prompts",
                  "generate",
                  "load_init_image",
                  "load_vqgan",
                  "make_param",
                  "parse_prompt",
                  "save_frames",
                  "save_gif",
                  "similarity_matrix",
                  "spherical_dist",
                  "to_pil",
]
