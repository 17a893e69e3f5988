"""kontrast.preprocess: exact parity with open_clip's eval transform, errors, train / fast / other modes."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from kontrast.errors import ImageError, KontrastError
from kontrast.preprocess import (
    FAST_MEAN_ABS_BOUND,
    OPENAI_MEAN,
    OPENAI_STD,
    Preprocess,
    TrainTransform,
    denormalize,
    image_transform,
    load_image,
)

NAMES = ["rgb_300x200", "rgb_97x311", "rgb_64x64", "rgba_161x160", "gray_200x203", "palette_130x170",
         "photo_320x240"]
PIXELS_64_ORDER = ["rgb_300x200", "rgb_97x311", "rgba_161x160", "photo_320x240"]


@pytest.fixture(scope="module")
def pre_dir(fixtures_dir: Path) -> Path:
    return fixtures_dir / "preprocess"


def image_path(pre_dir: Path, name: str) -> Path:
    return pre_dir / (name + (".jpg" if name.startswith("photo") else ".png"))


def photo_jpeg(width: int = 1024, height: int = 768, seed: int = 0) -> bytes:
    """A photo-like JPEG (gradient, shapes, mild noise), quality 90."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]  # [H, 1, 1]
    x = np.arange(width, dtype=np.float32)[None, :, None]  # [1, W, 1]
    base = 40 + 170 * y * np.array([1.0, 0.6, 0.3], np.float32) + 20 * np.sin(x / 37)  # [H, W, 3]
    img = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(20):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        draw.ellipse((x0, y0, x0 + 120, y0 + 90), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    arr = np.asarray(img).astype(np.int16) + rng.integers(-5, 6, (height, width, 3))  # [H, W, 3]
    buf = io.BytesIO()
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


# ----------------------------------------------------------------------------------- exact parity
@pytest.mark.parametrize("name", NAMES)
def test_matches_open_clip_224(pre_dir: Path, name: str) -> None:
    expected = load_file(pre_dir / "preprocess_expected.safetensors")[name]
    out = Preprocess(224)(image_path(pre_dir, name))
    assert out.dtype == torch.float32 and out.shape == (3, 224, 224)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_matches_pixels_64(fixtures_dir: Path, pre_dir: Path) -> None:
    expected = load_file(fixtures_dir / "inputs.safetensors")["pixels_64"]
    out = Preprocess(64).batch([image_path(pre_dir, n) for n in PIXELS_64_ORDER])
    assert out.shape == (4, 3, 64, 64)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_input_kinds_agree(pre_dir: Path) -> None:
    path = image_path(pre_dir, "rgba_161x160")
    pre = Preprocess(224)
    ref = pre(path)
    assert torch.equal(pre(str(path)), ref)
    assert torch.equal(pre(path.read_bytes()), ref)
    assert torch.equal(pre(bytearray(path.read_bytes())), ref)
    with Image.open(path) as img:
        assert torch.equal(pre(img), ref)
        assert img.mode == "RGBA"  # the caller's image is not converted in place


def test_load_image_keeps_mode(pre_dir: Path) -> None:
    assert load_image(image_path(pre_dir, "palette_130x170")).mode == "P"
    assert load_image(image_path(pre_dir, "gray_200x203")).mode == "L"
    lazy = load_image(image_path(pre_dir, "photo_320x240"), decode=False)
    assert lazy.size == (320, 240)
    lazy.close()


def test_pickle_and_batch(pre_dir: Path) -> None:
    pre = Preprocess(64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    clone = pickle.loads(pickle.dumps(pre))
    paths = [image_path(pre_dir, n) for n in ("rgb_64x64", "gray_200x203")]
    batch = clone.batch(paths)
    assert batch.shape == (2, 3, 64, 64)
    assert torch.equal(batch[1], pre(paths[1]))
    assert float(batch.min()) >= -1.0 and float(batch.max()) <= 1.0  # (x - 0.5) / 0.5 range


def test_denormalize_inverts(pre_dir: Path) -> None:
    path = image_path(pre_dir, "rgb_64x64")
    x = Preprocess(64)(path)
    rgb = np.asarray(Image.open(path).convert("RGB")).copy()  # [H, W, 3]
    pixels = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255  # [H, W, 3] -> [3, H, W]
    torch.testing.assert_close(denormalize(x), pixels, atol=1e-6, rtol=0)
    assert denormalize(x[None]).shape == (1, 3, 64, 64)


# ------------------------------------------------------------------------------------------- errors
def assert_image_error(exc: pytest.ExceptionInfo, name: str) -> None:
    msg = str(exc.value)
    assert isinstance(exc.value, KontrastError)
    assert msg.startswith("cannot read image ") and name in msg and "\n" not in msg


@pytest.mark.parametrize("fast", [False, True])
def test_missing_and_text_files(tmp_path: Path, fast: bool) -> None:
    pre = Preprocess(32, fast=fast)
    with pytest.raises(ImageError) as exc:
        pre(tmp_path / "nope.jpg")
    assert_image_error(exc, "nope.jpg")
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    with pytest.raises(ImageError) as exc:
        pre(text)
    assert_image_error(exc, "notes.txt")
    with pytest.raises(ImageError) as exc:
        pre(b"not an image")
    assert_image_error(exc, "<12 bytes>")


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("name", ["rgb_300x200", "photo_320x240"])
def test_truncated_files(tmp_path: Path, pre_dir: Path, name: str, fast: bool) -> None:
    data = image_path(pre_dir, name).read_bytes()
    cut = tmp_path / f"cut_{name}{image_path(pre_dir, name).suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as exc:
        Preprocess(64, fast=fast)(cut)
    assert_image_error(exc, cut.name)
    with pytest.raises(ImageError):
        load_image(cut)


@pytest.mark.parametrize("limit", [1000, 40_000])  # 60,000 pixels: > 2x limit (PIL error), 1-2x (warning)
def test_decompression_bomb(monkeypatch: pytest.MonkeyPatch, pre_dir: Path, limit: int) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    path = image_path(pre_dir, "rgb_300x200")
    with pytest.raises(ImageError) as exc:
        load_image(path)
    assert_image_error(exc, path.name)
    with pytest.raises(ImageError) as exc:
        Preprocess(64, fast=True)(path.read_bytes())
    assert_image_error(exc, "bytes")


# ------------------------------------------------------------------------------------------ modes
def test_squash_and_longest(pre_dir: Path) -> None:
    path = image_path(pre_dir, "rgb_300x200")
    assert Preprocess(48, resize_mode="squash")(path).shape == (3, 48, 48)
    out = Preprocess(60, resize_mode="longest")(path)  # 300x200 -> 60x40, zero-padded 10 rows each side
    assert out.shape == (3, 60, 60)
    black = ((0 - torch.tensor(OPENAI_MEAN)) / torch.tensor(OPENAI_STD)).view(3, 1, 1)  # [3] -> [3, 1, 1]
    torch.testing.assert_close(out[:, :10], black.expand(3, 10, 60))
    torch.testing.assert_close(out[:, 50:], black.expand(3, 10, 60))
    assert not torch.allclose(out[:, 10:50], black.expand(3, 40, 60))
    assert Preprocess((32, 48))(path).shape == (3, 32, 48)  # non-square target (h, w)
    with pytest.raises(ValueError):
        Preprocess(32, resize_mode="stretch")


def test_longest_pads_like_torchvision() -> None:
    # 10x4 white -> 8x3 (round(4 / 1.25)); pad (8 - 3) // 2 = 2 rows on top, 3 below
    img = Image.new("RGB", (10, 4), (255, 255, 255))
    out = denormalize(Preprocess(8, resize_mode="longest")(img))
    assert out.shape == (3, 8, 8)
    rows = out.mean(dim=(0, 2))  # [3, H, W] -> [H]
    torch.testing.assert_close(rows, torch.tensor([0, 0, 1, 1, 1, 0, 0, 0.0]), atol=1e-5, rtol=0)


def test_fast_close_to_exact_on_photo() -> None:
    data = photo_jpeg()
    exact, fast = Preprocess(224)(data), Preprocess(224, fast=True)(data)
    diff = (fast - exact).abs()
    assert float(diff.mean()) < FAST_MEAN_ABS_BOUND
    assert float(diff.max()) < 1.0  # a few grey levels at edges, never a different image
    cos = torch.nn.functional.cosine_similarity(fast.flatten(), exact.flatten(), dim=0)
    assert float(cos) > 0.999


@pytest.mark.parametrize("name", NAMES)
def test_fast_close_to_exact_on_fixtures(pre_dir: Path, name: str) -> None:
    path = image_path(pre_dir, name)
    diff = (Preprocess(224, fast=True)(path) - Preprocess(224)(path)).abs()
    assert float(diff.mean()) < 1e-3


# ------------------------------------------------------------------------------------------ train
def test_train_transform_shape_and_seed(pre_dir: Path) -> None:
    path = image_path(pre_dir, "photo_320x240")  # 4:3, so most draws fit (300x200 always falls back)
    a, b = TrainTransform(64, seed=7), TrainTransform(64, seed=7)
    outs_a = [a(path) for _ in range(3)]
    outs_b = [b(path) for _ in range(3)]
    assert outs_a[0].shape == (3, 64, 64)
    assert all(torch.equal(x, y) for x, y in zip(outs_a, outs_b))
    assert not all(torch.equal(outs_a[0], x) for x in outs_a[1:])  # the crop changes from call to call
    other = TrainTransform(64, seed=8)(path)
    assert not torch.equal(other, outs_a[0])


def test_train_transform_generator_and_pickle(pre_dir: Path) -> None:
    path = image_path(pre_dir, "photo_320x240")
    t = TrainTransform(48, generator=torch.Generator().manual_seed(3), hflip=True, fast=True)
    clone = pickle.loads(pickle.dumps(t))  # generator state travels with it
    assert torch.equal(t(path), clone(path))
    seeded = TrainTransform(48, seed=5)
    seeded(path)
    restored = pickle.loads(pickle.dumps(seeded))  # seeded stream restarts where it is unpickled
    assert torch.equal(restored(path), TrainTransform(48, seed=5)(path))


def test_train_crop_fallback_and_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    # 3:2 never fits a 0.9..1 area crop within ratio 3/4..4/3: torchvision's center fallback
    assert TrainTransform(32, seed=0).crop_params(300, 200) == (0, 16, 200, 267)
    in_main = TrainTransform(32, scale=(0.1, 1.0), seed=0).crop_params(500, 500)

    class Info:
        id = 1

    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: Info())
    in_worker = TrainTransform(32, scale=(0.1, 1.0), seed=0).crop_params(500, 500)
    assert in_main != in_worker  # DataLoader workers get distinct streams from one seed


def test_train_crop_params_in_bounds() -> None:
    t = TrainTransform(32, scale=(0.08, 1.0), seed=0)
    for w, h in [(300, 200), (97, 311), (1000, 10), (5, 5)]:
        for _ in range(20):
            top, left, ch, cw = t.crop_params(w, h)
            assert 0 <= top and 0 <= left and 0 < ch and 0 < cw
            assert top + ch <= h and left + cw <= w


def test_image_transform_factory() -> None:
    assert isinstance(image_transform(224), Preprocess)
    train = image_transform(64, is_train=True, seed=1, scale=(0.5, 1.0))
    assert isinstance(train, TrainTransform) and train.scale == (0.5, 1.0)
    assert image_transform(64, fast=True, resize_mode="squash").fast
    with pytest.raises(TypeError):
        image_transform(64, seed=1)
