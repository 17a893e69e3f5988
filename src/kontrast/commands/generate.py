"""``kontrast generate "a watercolor portrait of a cat" --out cat.png``: CLIP-guided image generation.

Optimises an image (raw pixels, a decorrelated Fourier spectrum, or a VQGAN latent) so that CLIP
embeds many augmented crops of it close to the prompts. Prompts may carry weights, ``"a cat:1"
"blurry:-0.5"``; a negative weight pushes the image away. A progress bar shows the CLIP score (cosine
similarity of the whole image to the first positive prompt).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .common import add_model_args, load_model


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate an image from text prompts with CLIP guidance",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("prompts", nargs="+", metavar="PROMPT",
                   help='texts, each optionally with a weight: "a cat:1" "blurry:-0.5"')
    p.add_argument("--out", default=None, help="output PNG (default: the first prompt as a file name)")
    p.add_argument("--negative", action="append", default=[], metavar="TEXT",
                   help='a text to move away from ("TEXT" or "TEXT:W" for weight -|W|; default weight -1); repeatable')
    p.add_argument("--param", choices=["pixels", "fourier", "vqgan"], default="fourier",
                   help="what is optimised: raw pixels, a decorrelated Fourier spectrum (default), or a VQGAN latent")
    p.add_argument("--vqgan-checkpoint", default=None, metavar="CKPT", help="taming-transformers .ckpt (--param vqgan)")
    p.add_argument("--vqgan-config", default=None, metavar="YAML", help="its model.yaml (--param vqgan)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow a full (code-running) unpickle of a VQGAN .ckpt holding more than tensors")
    p.add_argument("--steps", type=int, default=300, help="optimisation steps (default 300)")
    p.add_argument("--size", default="224", help="output size: N or WxH (default 224; vqgan rounds down to its grid)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same image")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: 0.05 pixels/fourier, 0.1 vqgan)")
    p.add_argument("--schedule", choices=["cosine", "step", "constant"], default="cosine",
                   help="learning-rate decay after a short linear warm-up (default cosine)")
    p.add_argument("--cutouts", type=int, default=32, help="augmented crops scored per step (default 32)")
    p.add_argument("--cut-min-scale", type=float, default=None,
                   help="smallest crop side as a fraction of the image (default: auto, 0.25-0.7)")
    p.add_argument("--init", default=None, metavar="IMAGE",
                   help="start from this image (pixels/fourier); with vqgan, pulled towards it (--init-weight)")
    p.add_argument("--init-weight", type=float, default=None,
                   help="MSE pull towards --init (default 0 for pixels/fourier, 1 for vqgan, where it is "
                        "the only way --init acts)")
    p.add_argument("--tv", type=float, default=0.0, help="total-variation smoothness weight (default 0)")
    p.add_argument("--frames", default=None, metavar="DIR", help="write a frame every --frame-every steps here")
    p.add_argument("--gif", default=None, metavar="FILE", help="write an animated GIF of the optimisation")
    p.add_argument("--frame-every", type=int, default=10, help="steps between frames (default 10)")
    add_model_args(p)
    p.set_defaults(func=run)


def parse_size(text: str) -> tuple[int, int]:
    """``"224"`` -> (224, 224); ``"320x192"`` (width x height) -> (192, 320) as (height, width)."""
    from ..errors import KontrastError

    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text)
    if not match:
        raise KontrastError(f"--size {text!r}: give N or WxH, e.g. 224 or 320x192")
    w = int(match[1])
    h = int(match[2]) if match[2] else w
    return h, w


def default_out(prompt: str) -> str:
    """A file name from the prompt text: ``"a red heart:1"`` -> ``a_red_heart.png``."""
    stem = re.sub(r"[^A-Za-z0-9]+", "_", prompt).strip("_")[:60] or "generated"
    return f"{stem}.png"


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from ..errors import KontrastError
    from ..generate import (
        GenerateConfig,
        generate,
        load_init_image,
        load_vqgan,
        parse_prompt,
        save_frames,
        save_gif,
    )
    from ..generate.objective import Prompt
    from ..generate.run import check_config

    prompts = [parse_prompt(s) for s in args.prompts]
    for spec in args.negative:
        neg = parse_prompt(spec)
        prompts.append(Prompt(neg.text, -abs(neg.weight)))
    height, width = parse_size(args.size)
    init_weight = args.init_weight if args.init_weight is not None else (1.0 if args.param == "vqgan" and args.init else 0.0)
    config = GenerateConfig(steps=args.steps, size=(height, width), param=args.param, lr=args.lr, schedule=args.schedule,
                            cutouts=args.cutouts, cut_min_scale=args.cut_min_scale, seed=args.seed,
                            init_weight=init_weight, tv_weight=args.tv,
                            frame_every=args.frame_every if (args.frames or args.gif) else 0)
    check_config(config, prompts)
    if (args.frames or args.gif) and args.frame_every < 1:
        raise KontrastError(f"--frame-every must be at least 1, got {args.frame_every}")
    out = Path(args.out or default_out(prompts[0].text))
    if out.parent and not out.parent.is_dir():
        raise KontrastError(f"--out {out}: folder {out.parent} does not exist; create it or pick another path")
    vqgan = None
    if args.param == "vqgan":
        if not args.vqgan_checkpoint or not args.vqgan_config:
            raise KontrastError("--param vqgan needs --vqgan-checkpoint CKPT and --vqgan-config YAML "
                                "(a taming-transformers VQGAN)")
        vqgan = load_vqgan(args.vqgan_checkpoint, args.vqgan_config, trust_checkpoint=args.trust_checkpoint)
    elif args.vqgan_checkpoint or args.vqgan_config:
        raise KontrastError("--vqgan-checkpoint/--vqgan-config only apply with --param vqgan")
    init = load_init_image(args.init, (height, width)) if args.init else None

    torch.manual_seed(args.seed)
    model, _, tokenizer = load_model(args, torch_only=True)  # guidance needs gradients through the towers
    bar = tqdm(total=config.steps, desc="generate", unit="step", file=sys.stderr, dynamic_ncols=True)

    def progress(info) -> None:
        bar.update(1)
        bar.set_postfix(score=f"{info.score:.3f}", loss=f"{info.loss:.3f}", refresh=False)

    try:
        result = generate(model, tokenizer, prompts, config, init_image=init, vqgan=vqgan, progress=progress)
    finally:
        bar.close()
    try:
        result.image.save(out)
    except (OSError, ValueError) as exc:
        raise KontrastError(f"cannot write {out}: {exc}; pass --out FILE.png in a writable folder") from exc
    if args.frames:
        save_frames(result.frames, args.frames)
    if args.gif:
        save_gif(result.frames, args.gif)
    main = next(p for p in result.prompts if p.weight > 0)
    print(f"{out}  {result.image.width}x{result.image.height}  CLIP score {result.scores[0]:.3f} -> "
          f"{result.final_score:.3f}  ({main.text!r})")
    if args.frames:
        print(f"{len(result.frames)} frames in {args.frames}")
    if args.gif:
        print(f"GIF: {args.gif}")
    return 0
