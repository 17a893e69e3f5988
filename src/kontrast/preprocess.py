"""Image preprocessing: the OpenAI / open_clip eval transform (exact), a fast variant, and a train transform.

Exact eval transform (``Preprocess(fast=False)``), the same steps open_clip's ``image_transform(size,
is_train=False)`` runs through torchvision on a PIL image, reproduced with PIL + numpy only:

1. resize with PIL ``BICUBIC`` (or ``BILINEAR``, as the model's record says) in the image's OWN mode (Pillow
   resizes RGBA/LA with premultiplied alpha and forces NEAREST for 'P' and '1'); ``"shortest"``: shorter
   side -> size, longer side ``int(size * long / short)`` (truncated); ``"longest"``: longer side -> size,
   both sides ``round(side / ratio)``; ``"squash"``: both sides -> size; skipped when the size already matches;
2. center crop with offset ``int(round((L - size) / 2.0))`` (Python's round-half-to-even), padding with the
   fill value (0 unless the record says otherwise) when the image is smaller than the crop; no crop when
   squashing;
3. ``convert("RGB")`` AFTER resize and crop (alpha dropped, no compositing);
4. ``(uint8 / 255 - mean) / std`` in float32. A 256-entry table per channel holds exactly these float32
   values, so the lookup is bit-identical to the arithmetic and cheaper.

``fast=True`` trades exactness for speed on large photos: JPEG DCT-domain downscaling (``draft``; the
decoder scales by 1/2, 1/4 or 1/8 while keeping the image at least as large as the resize target),
Pillow's ``reducing_gap`` (an integer box reduction before bicubic for large factors), bicubic
resampling of the crop region only, and a fused multiply-add normalisation. Draft decoding changes
pixel values slightly (different IDCT and chroma upsampling), so outputs differ from the exact path by
a few grey levels. Measured by ``benchmarks/preprocess.py`` on 1024x768 photo-like JPEGs (quality 90):
mean abs ~0.006, max abs ~0.27 in normalised units (1 grey level ~0.015), cosine > 0.9998; on dense
noise-like texture the mean abs reaches ~0.055. Images that are not JPEG files opened here (PNG, PIL
images passed in) only get the box-resize / reducing-gap changes: differences of ~1e-7 to one grey level.
'P' and '1' images take the exact path. About 2.5x faster than the exact path on such photos.
"""

from __future__ import annotations

import io
import math
import os
import struct
import warnings
import zlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from .errors import ImageError
from .record import INTERPOLATIONS, OPENAI_MEAN, OPENAI_STD, RESIZE_MODES, PreprocessConfig

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}

#: Pillow's ``reducing_gap`` in fast mode: 3.0 is the value Pillow documents as visually lossless.
REDUCING_GAP = 3.0
#: Bound on the mean absolute deviation (normalised units) of fast vs exact on photo-like JPEGs: ~3x the
#: worst value measured by benchmarks/preprocess.py (0.007). Dense noise-like texture can reach ~0.055.
FAST_MEAN_ABS_BOUND = 0.02

ImageInput = Image.Image | str | os.PathLike | bytes | bytearray | memoryview

#: What Pillow raises for bad image data, and only that: unreadable, truncated or corrupt files, modes or
#: formats it cannot handle, failed decoders, decompression bombs. Anything else (TypeError, AttributeError,
#: KeyError, ...) is a bug and must propagate with its traceback instead of becoming "a skipped image".
DECODE_ERRORS: tuple[type[BaseException], ...] = (OSError, SyntaxError, EOFError, ValueError, struct.error, zlib.error,
                                                  Image.DecompressionBombError)


# --------------------------------------------------------------------------------------------- loading
def _describe(src: object) -> str:
    """A short name for error messages: the path, or what kind of in-memory input it was."""
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src) if isinstance(os.fspath(src), str) else repr(os.fspath(src))
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"<{len(src)} bytes>"
    if isinstance(src, Image.Image):
        return getattr(src, "filename", "") or "<PIL image>"
    return f"<{type(src).__name__}>"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _bomb_reason(pixels: int) -> str:
    return (f"{pixels} pixels is more than PIL.Image.MAX_IMAGE_PIXELS={Image.MAX_IMAGE_PIXELS} "
            "(possible decompression bomb; raise the limit if you trust the file)")


def _open(src: ImageInput, name: str) -> Image.Image:
    """``Image.open`` (header only) with every failure turned into a one-line ImageError."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        fp: object = io.BytesIO(bytes(src))
    elif isinstance(src, (str, os.PathLike)):
        fp = os.fspath(src)
    elif hasattr(src, "read") and hasattr(src, "seek"):  # a binary file (an upload's spool): read lazily
        fp = src
    else:
        raise TypeError(f"expected a PIL image, a path, bytes or a binary file, got {type(src).__name__}")
    try:
        with warnings.catch_warnings():  # the warning (1x..2x the limit) is an error here, like the 2x error
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(fp)  # type: ignore[arg-type]
    except FileNotFoundError:
        reason = "file not found (check the path)"
    except IsADirectoryError:
        reason = "is a directory, not an image file"
    except PermissionError:
        reason = "permission denied (check the file's permissions)"
    except Image.UnidentifiedImageError:
        reason = "not an image file, or a format Pillow cannot read (remove or convert it)"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        reason = f"{_one_line(exc)} (raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file)"
    except DECODE_ERRORS as exc:  # other plugin failures on bad data
        reason = _one_line(exc)
    raise ImageError(f"cannot read image {name}: {reason}")


def _decode(img: Image.Image, name: str) -> None:
    """Decode the pixels now so truncated or corrupt data fails here, with the file name."""
    try:
        img.load()
    except DECODE_ERRORS as exc:
        raise ImageError(f"cannot read image {name}: {_one_line(exc)} (the file is truncated or corrupt; "
                         "re-download or remove it)") from None


def load_image(src: ImageInput, *, decode: bool = True) -> Image.Image:
    """Open an image from a path, bytes or a PIL image, keeping its mode (no RGB conversion).

    Opening is lazy (header only) and, when ``decode`` is true (the default), the pixels are decoded
    at once so truncated files fail here. ``decode=False`` returns the lazy handle, for callers that
    use JPEG ``draft`` before decoding. Raises ``ImageError("cannot read image FILE: reason")`` for
    missing, unreadable, non-image or truncated files and for images above
    ``PIL.Image.MAX_IMAGE_PIXELS`` (Pillow's decompression-bomb warning is treated as an error).
    """
    name = _describe(src)
    img = src if isinstance(src, Image.Image) else _open(src, name)
    limit = Image.MAX_IMAGE_PIXELS
    pixels = img.size[0] * img.size[1]
    if limit is not None and pixels > limit:  # also covers PIL images and a warnings filter raced away
        if img is not src:
            img.close()
        raise ImageError(f"cannot read image {name}: {_bomb_reason(pixels)}")
    if decode:
        _decode(img, name)
    return img


# -------------------------------------------------------------------------------------------- geometry
def _target_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = (int(v) for v in image_size)
    return h, w


def _resized_size(w: int, h: int, target_hw: tuple[int, int], mode: str) -> tuple[int, int]:
    """(width, height) of the resize step, with torchvision / open_clip rounding rules."""
    th, tw = target_hw
    if mode == "squash":
        return tw, th
    if mode == "shortest" and th == tw:  # torchvision Resize(int): truncates the long side
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(th * long / short)
        return (th, new_long) if w <= h else (new_long, th)
    # open_clip ResizeKeepRatio: one ratio for both sides (min for shortest, max for longest), round()
    rh, rw = h / th, w / tw
    ratio = max(rh, rw) if mode == "longest" else min(rh, rw)
    return round(w / ratio), round(h / ratio)


def _center_box(w: int, h: int, target_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """Crop box (left, top, right, bottom) of torchvision's CenterCrop; it extends past the image
    (PIL fills with zeros, like torchvision's zero padding) where the image is smaller than the crop."""
    th, tw = target_hw

    def start(length: int, crop: int) -> int:
        if crop > length:  # padded by (crop - length) // 2 on the left / top
            return -((crop - length) // 2)
        return round((length - crop) / 2.0)

    left, top = start(w, tw), start(h, th)
    return left, top, left + tw, top + th


def _crop_or_pad(img: Image.Image, target_hw: tuple[int, int], fill: int = 0) -> Image.Image:
    """torchvision's CenterCrop / open_clip's CenterCropOrPad: where the image is smaller than the crop it is
    padded first, ``(crop - length) // 2`` before it, with ``fill`` in every band (a palette index for 'P')."""
    w, h = img.size
    box = _center_box(w, h, target_hw)
    if box == (0, 0, w, h):
        return img
    inside = box[0] >= 0 and box[1] >= 0 and box[2] <= w and box[3] <= h
    if inside or fill == 0:  # PIL fills what lies outside the image with zeros (index 0 for 'P')
        return img.crop(box)
    bands = len(img.getbands())
    canvas = Image.new(img.mode, (box[2] - box[0], box[3] - box[1]), fill if bands == 1 else (fill,) * bands)
    if img.mode == "P":
        canvas.putpalette(img.getpalette())
    src = (max(box[0], 0), max(box[1], 0), min(box[2], w), min(box[3], h))
    canvas.paste(img.crop(src), (src[0] - box[0], src[1] - box[1]))
    return canvas


def _fast_region(img: Image.Image, name: str, draft: bool, box: tuple[float, float, float, float],
                 out_wh: tuple[int, int], resample: int = Image.Resampling.BICUBIC) -> Image.Image:
    """Resample ``box`` (source pixel coordinates) of a possibly undecoded image to ``out_wh``,
    letting the JPEG decoder downscale first (only if ``draft``) as far as keeps the box >= out_wh."""
    w, h = img.size
    fx = fy = 1.0
    if draft:
        bw, bh = box[2] - box[0], box[3] - box[1]
        # Pillow picks the scale s in (8, 4, 2, 1) with s <= min(w // rw, h // rh), so s <= bw / out_w.
        rw = max(1, math.ceil(out_wh[0] * w / bw - 1e-6))
        rh = max(1, math.ceil(out_wh[1] * h / bh - 1e-6))
        res = img.draft("RGB", (rw, rh))
        if res is not None:
            fx, fy = res[1][2] / w, res[1][3] / h
    _decode(img, name)
    scaled = (box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy)
    return img.resize(out_wh, resample, box=scaled, reducing_gap=REDUCING_GAP)


# ------------------------------------------------------------------------------------------ normalise
class _Normalizer:
    """float32 ``(x / 255 - mean) / std`` from HWC uint8 arrays to CHW float32 tensors."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values each, std > 0; got mean={mean}, std={std}")
        mean32 = np.asarray(self.mean, np.float32)[:, None]  # [3, 1]
        std32 = np.asarray(self.std, np.float32)[:, None]  # [3, 1]
        levels = np.arange(256, dtype=np.float32)[None, :] / np.float32(255)  # [1, 256]
        self.lut = (levels - mean32) / std32  # [3, 256], the exact float32 values
        self.scale = (1.0 / (255.0 * np.asarray(self.std))).astype(np.float32)  # [3]
        self.shift = (-np.asarray(self.mean) / np.asarray(self.std)).astype(np.float32)  # [3]

    def __call__(self, rgb: np.ndarray, fast: bool = False) -> torch.Tensor:
        h, w, _ = rgb.shape
        out = np.empty((3, h, w), np.float32)  # CHW, filled channel by channel from HWC
        for c in range(3):
            if fast:
                np.multiply(rgb[:, :, c], self.scale[c], out=out[c])
                out[c] += self.shift[c]
            else:
                np.take(self.lut[c], rgb[:, :, c], out=out[c])
        return torch.from_numpy(out)


def _rgb_on_white(img: Image.Image) -> Image.Image:
    """Hugging Face's RGB conversion: transparency is composited onto white (open_clip drops alpha instead)."""
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img.convert("RGB")


def _rgb_array(img: Image.Image) -> np.ndarray:
    """HWC uint8 RGB pixels, converting the mode last (after resize / crop) as open_clip does."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img)  # [H, W, 3]


def _pil_failure(name: str, exc: Exception) -> ImageError:
    return ImageError(f"cannot read image {name}: {_one_line(exc)} (unsupported image mode or data)")


# ------------------------------------------------------------------------------------------ transforms
class Preprocess:
    """The eval transform: image (PIL, path or bytes) -> normalised float32 tensor [3, H, W].

    Build it from a model's record (``kontrast.record.build_preprocess`` / ``Preprocess.from_config``) so it
    matches the model. Steps, as open_clip's ``image_transform(is_train=False)`` runs them through torchvision:
    resize to ``resize_size`` (default: ``image_size``) by ``resize_mode`` -- ``"shortest"`` side (torchvision
    ``Resize(int)``: the long side is truncated), ``"longest"`` side (open_clip ``ResizeKeepRatio``: both sides
    rounded) or ``"squash"`` (both sides) -- with PIL ``interpolation`` (``"bicubic"`` or ``"bilinear"``;
    open_clip resizes a non-square ``"shortest"`` target bicubically whatever it is told, and so does this);
    then, if ``crop`` (default: unless squashing), a centre crop to ``image_size`` that pads with ``fill``
    (open_clip ``CenterCropOrPad``); then RGB and normalisation. ``rgb_first=True`` converts to RGB BEFORE
    resizing, compositing transparency onto white, as Hugging Face image processors do (open_clip converts after
    resizing and drops alpha; the two differ on RGBA and palette images). ``fast=True``: see the module docstring (not
    bit-exact). Picklable, so it can be handed to DataLoader workers.
    """

    def __init__(self, image_size: int | Sequence[int] = 224, mean: Sequence[float] = OPENAI_MEAN,
                 std: Sequence[float] = OPENAI_STD, resize_mode: str = "shortest",
                 fast: bool = False, interpolation: str = "bicubic", resize_size: int | None = None,
                 crop: bool | None = None, fill: int = 0, rgb_first: bool = False) -> None:
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"unknown resize_mode {resize_mode!r}; use one of {', '.join(RESIZE_MODES)}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {interpolation!r}; use one of {', '.join(INTERPOLATIONS)}")
        self.interpolation, self.rgb_first = interpolation, bool(rgb_first)
        self.image_size = image_size
        self.target_hw = _target_hw(image_size)
        if min(self.target_hw) < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.resize_mode = resize_mode
        self.resize_hw = self.target_hw if resize_size is None else _target_hw(resize_size)
        self.crop = resize_mode != "squash" if crop is None else bool(crop)
        if not self.crop and resize_mode != "squash":
            raise ValueError("crop=False needs resize_mode='squash' (otherwise the output size varies)")
        self.fill = int(fill)
        self.fast = bool(fast)
        self.normalize = _Normalizer(mean, std)

    @classmethod
    def from_config(cls, cfg: PreprocessConfig, image_size: int | Sequence[int], fast: bool = False) -> Preprocess:
        """The transform a record's ``PreprocessConfig`` describes, at the model's ``image_size``."""
        return cls(image_size, mean=cfg.mean, std=cfg.std, resize_mode=cfg.resize_mode, fast=fast,
                   interpolation=cfg.interpolation, resize_size=cfg.resize_size, crop=cfg.crop, fill=cfg.fill,
                   rgb_first=cfg.rgb_first)

    @property
    def mean(self) -> tuple[float, ...]:
        return self.normalize.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.normalize.std

    @property
    def config(self) -> PreprocessConfig:
        """This transform as a record's ``PreprocessConfig``."""
        size = None if self.resize_hw == self.target_hw else self.resize_hw[0]
        return PreprocessConfig(mean=self.mean, std=self.std, interpolation=self.interpolation,  # type: ignore[arg-type]
                                resize_mode=self.resize_mode, resize_size=size, crop=self.crop, fill=self.fill,
                                rgb_first=self.rgb_first)

    def __repr__(self) -> str:
        extra = "" if self.resize_hw == self.target_hw else f", resize_size={self.resize_hw[0]}"
        extra += "" if self.crop == (self.resize_mode != "squash") else f", crop={self.crop}"
        extra += "" if not self.fill else f", fill={self.fill}"
        return (f"Preprocess(image_size={self.image_size}, resize_mode={self.resize_mode!r}, "
                f"interpolation={self.interpolation!r}{extra}, rgb_first={self.rgb_first}, fast={self.fast}, mean={self.mean}, std={self.std})")

    def __call__(self, image: ImageInput) -> torch.Tensor:
        name = _describe(image)
        owned = not isinstance(image, Image.Image)
        img = load_image(image, decode=not self.fast)
        try:
            fast = self.fast and not self.rgb_first  # the fast path converts after resizing
            out = self._fast(img, name, owned) if fast else self._exact(img)
            rgb = _rgb_array(out)
        except DECODE_ERRORS as exc:  # PIL refusing a mode / corrupt data (ImageError passes through)
            raise _pil_failure(name, exc) from None
        finally:
            if owned:
                img.close()
        return self.normalize(rgb, fast=self.fast)

    def batch(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """Stack the transform of each image: [N, 3, H, W]. Raises ImageError on the first bad image."""
        th, tw = self.target_hw
        out = torch.empty(len(images), 3, th, tw, dtype=torch.float32)
        for i, image in enumerate(images):
            out[i] = self(image)
        return out

    def _resample(self) -> int:
        if self.resize_mode == "shortest" and self.resize_hw[0] != self.resize_hw[1]:
            return Image.Resampling.BICUBIC  # open_clip: ResizeKeepRatio(image_size) keeps its bicubic default
        return _RESAMPLE[self.interpolation]

    def _exact(self, img: Image.Image) -> Image.Image:
        if self.rgb_first and img.mode != "RGB":
            img = _rgb_on_white(img)
        new_wh = _resized_size(*img.size, self.resize_hw, self.resize_mode)
        if new_wh != img.size:
            img = img.resize(new_wh, self._resample())
        return _crop_or_pad(img, self.target_hw, self.fill) if self.crop else img

    def input_region(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The part of a ``width x height`` source image that the output covers, as ``(x0, y0, x1, y1)`` in source
        pixels: the centre crop's box, or a box reaching past the image where the transform pads (``"longest"``).
        Maps output-pixel positions (a localisation heatmap) back onto the source image."""
        new_w, new_h = _resized_size(width, height, self.target_hw, self.resize_mode)
        th, tw = self.target_hw
        left, top, right, bottom = (0, 0, tw, th) if self.resize_mode == "squash" else _center_box(new_w, new_h, self.target_hw)
        sx, sy = width / new_w, height / new_h
        return left * sx, top * sy, right * sx, bottom * sy

    def _fast(self, img: Image.Image, name: str, owned: bool) -> Image.Image:
        if img.mode in ("1", "P"):  # Pillow resizes these NEAREST: cheap already, and box-resizing
            _decode(img, name)  # them would pick different source pixels
            return self._exact(img)
        w, h = img.size
        new_w, new_h = _resized_size(w, h, self.resize_hw, self.resize_mode)
        crop = _center_box(new_w, new_h, self.target_hw) if self.crop else None
        if crop is not None and crop[0] >= 0 and crop[1] >= 0 and crop[2] <= new_w and crop[3] <= new_h:
            # resample only the crop region: its box in source coordinates, straight to the crop size
            sx, sy = w / new_w, h / new_h
            box = (crop[0] * sx, crop[1] * sy, crop[2] * sx, crop[3] * sy)
            return _fast_region(img, name, owned, box, (crop[2] - crop[0], crop[3] - crop[1]), self._resample())
        out = _fast_region(img, name, owned, (0.0, 0.0, float(w), float(h)), (new_w, new_h), self._resample())
        return out if crop is None else _crop_or_pad(out, self.target_hw, self.fill)


class TrainTransform:
    """open_clip-style train transform: RandomResizedCrop (bicubic) [-> horizontal flip] -> RGB -> normalise.

    The crop is drawn like torchvision's ``RandomResizedCrop.get_params`` (area fraction in ``scale``,
    log-uniform aspect ratio in ``ratio``, 10 tries then a center-crop fallback). Randomness comes from
    ``generator`` if given, else from a private generator seeded with ``seed`` (offset by the DataLoader
    worker id, so workers do not repeat each other), else from torch's global RNG (which the DataLoader
    seeds per worker). ``hflip`` is off by default: captions may say "left" or "right".
    """

    def __init__(self, image_size: int | Sequence[int] = 224, scale: tuple[float, float] = (0.9, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), mean: Sequence[float] = OPENAI_MEAN,
                 std: Sequence[float] = OPENAI_STD, hflip: bool = False, seed: int | None = None,
                 generator: torch.Generator | None = None, fast: bool = False) -> None:
        if not (0 < scale[0] <= scale[1] <= 1) or not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"need 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1]; "
                             f"got scale={scale}, ratio={ratio}")
        self.image_size = image_size
        self.target_hw = _target_hw(image_size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.hflip = bool(hflip)
        self.seed = seed
        self.fast = bool(fast)
        self.normalize = _Normalizer(mean, std)
        self._generator = generator
        self._own_generator: torch.Generator | None = None
        self._own_key: int | None = None

    def __repr__(self) -> str:
        return (f"TrainTransform(image_size={self.image_size}, scale={self.scale}, ratio={self.ratio}, "
                f"hflip={self.hflip}, seed={self.seed}, fast={self.fast})")

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_own_generator"], state["_own_key"] = None, None  # rebuilt from the seed where it is used
        return state

    def _rng(self) -> torch.Generator | None:
        if self._generator is not None or self.seed is None:
            return self._generator
        info = torch.utils.data.get_worker_info()
        key = -1 if info is None else info.id
        if self._own_generator is None or self._own_key != key:
            self._own_generator = torch.Generator().manual_seed(self.seed + 1_000_003 * (key + 1))
            self._own_key = key
        return self._own_generator

    def crop_params(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(top, left, height, width) of a random crop of a width x height image."""
        g = self._rng()
        area = width * height
        log_lo, log_hi = (float(v) for v in torch.log(torch.tensor(self.ratio)))
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(self.scale[0], self.scale[1], generator=g).item()
            aspect = torch.exp(torch.empty(1).uniform_(log_lo, log_hi, generator=g)).item()
            w = round(math.sqrt(target_area * aspect))
            h = round(math.sqrt(target_area / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=g).item())
                left = int(torch.randint(0, width - w + 1, (1,), generator=g).item())
                return top, left, h, w
        in_ratio = width / height  # fallback: the largest center crop within the ratio range
        if in_ratio < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            w, h = round(height * self.ratio[1]), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, image: ImageInput) -> torch.Tensor:
        name = _describe(image)
        owned = not isinstance(image, Image.Image)
        img = load_image(image, decode=not self.fast)
        th, tw = self.target_hw
        try:
            top, left, h, w = self.crop_params(*img.size)
            flip = self.hflip and torch.rand(1, generator=self._rng()).item() < 0.5
            if self.fast:
                out = _fast_region(img, name, owned, (left, top, left + w, top + h), (tw, th))
            else:
                out = img.crop((left, top, left + w, top + h))
                if out.size != (tw, th):
                    out = out.resize((tw, th), Image.Resampling.BICUBIC)
            if flip:
                out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            rgb = _rgb_array(out)
        except DECODE_ERRORS as exc:  # PIL refusing a mode / corrupt data (ImageError passes through)
            raise _pil_failure(name, exc) from None
        finally:
            if owned:
                img.close()
        return self.normalize(rgb, fast=self.fast)


def image_transform(image_size: int | Sequence[int], is_train: bool = False,
                    mean: Sequence[float] = OPENAI_MEAN, std: Sequence[float] = OPENAI_STD,
                    fast: bool = False, resize_mode: str = "shortest", interpolation: str = "bicubic",
                    fill: int = 0, **train_kwargs: object) -> Callable[[ImageInput], torch.Tensor]:
    """open_clip-like factory: the train transform if ``is_train`` (``train_kwargs`` go to
    ``TrainTransform``: scale, ratio, hflip, seed, generator), else the eval ``Preprocess``."""
    if is_train:
        kwargs: dict = dict(train_kwargs)
        return TrainTransform(image_size, mean=mean, std=std, fast=fast, **kwargs)
    if train_kwargs:
        raise TypeError(f"eval transform takes no {', '.join(sorted(train_kwargs))}")
    return Preprocess(image_size, mean=mean, std=std, resize_mode=resize_mode, fast=fast,
                      interpolation=interpolation, fill=fill)


def denormalize(x: torch.Tensor, mean: Sequence[float] = OPENAI_MEAN,
                std: Sequence[float] = OPENAI_STD) -> torch.Tensor:
    """Undo the normalisation of [3, H, W] or [N, 3, H, W] pixels, back to [0, 1] (not clamped)."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)  # [3] -> [3, 1, 1]
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)  # [3] -> [3, 1, 1]
    return x * s + m
