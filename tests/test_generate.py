"""CLIP-guided generation: prompts, the objective, parameterisations, the loop and the CLI.

The end-to-end check uses the random-weight 64 px fixture ViT: even without trained weights the
optimiser must make each image closer to its own prompt's embedding than to the other prompts'
(a confusion-matrix diagonal), and the CLIP score must rise over the run.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from PIL import Image

import kontrast
from kontrast.cli import main
from kontrast.errors import KontrastError
from kontrast.generate import (
    ClipObjective,
    Cutouts,
    FourierImage,
    GenerateConfig,
    PixelImage,
    Prompt,
    encode_prompts,
    generate,
    make_param,
    parse_prompt,
    similarity_matrix,
    spherical_dist,
)
from kontrast.generate.objective import total_variation
from kontrast.generate.run import auto_min_scale, load_init_image, lr_at, to_pil

# Short names: in the random text tower, "an emoji of a ..." prompts are 0.83-0.95 alike (the shared
# prefix dominates), closer than a random image tower can resolve under augmentation (the heart row
# then wins or loses by the seed). These are 0.27-0.53 alike; every row wins by >= 0.18 over seeds 0-2.
# scripts/generate_examples.py runs the full emoji set with the trained default model.
PROMPTS = ["a red heart", "a pizza", "a tree"]


@pytest.fixture(scope="module")
def fixture_model(fixtures_dir):
    # one thread: these tiny models gain nothing from more, and the CPU may be shared
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield kontrast.load(fixtures_dir / "openai_vit.pt")
    torch.set_num_threads(threads)


@pytest.mark.parametrize("spec, text, weight", [
    ("a cat", "a cat", 1.0),
    ("a cat:1", "a cat", 1.0),
    ("blurry:-0.5", "blurry", -0.5),
    ("a cat: 2.5 ", "a cat", 2.5),
    ("photo: a cat", "photo: a cat", 1.0),
    ("ratio 16:9:0.5", "ratio 16:9", 0.5),
    ("weight:1e-1", "weight", 0.1),
    ("a:b:c", "a:b:c", 1.0),
])
def test_parse_prompt(spec, text, weight):
    assert parse_prompt(spec) == Prompt(text, weight)


@pytest.mark.parametrize("spec", ["", ":1", "   :-2"])
def test_parse_prompt_rejects_empty_text(spec):
    with pytest.raises(KontrastError, match="empty prompt"):
        parse_prompt(spec)


def test_spherical_dist_is_half_squared_angle():
    a = torch.nn.functional.normalize(torch.randn(5, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(5, 16, generator=torch.Generator().manual_seed(1)), dim=-1)
    angle = torch.arccos((a * b).sum(-1).clamp(-1, 1))
    torch.testing.assert_close(spherical_dist(a, b), angle ** 2 / 2, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(spherical_dist(a, a), torch.zeros(5))
    # arcsin is steep at 1: float32 rounding of the unit norms costs ~1e-3 here
    torch.testing.assert_close(spherical_dist(a, -a), torch.full((5,), math.pi ** 2 / 2), atol=1e-2, rtol=0)
    # broadcasting [n, 1, D] x [1, P, D] -> [n, P]
    assert spherical_dist(a[:, None], b[None, :3]).shape == (5, 3)


def test_cutouts_shapes_determinism_and_identity():
    image = torch.rand(1, 3, 80, 120, generator=torch.Generator().manual_seed(0), requires_grad=True)
    cut = Cutouts((32, 32), count=6)
    a = cut(image, torch.Generator().manual_seed(3))
    b = cut(image, torch.Generator().manual_seed(3))
    c = cut(image, torch.Generator().manual_seed(4))
    assert a.shape == (6, 3, 32, 32)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    a.sum().backward()  # differentiable back to the image
    assert image.grad is not None and image.grad.abs().sum() > 0
    # no augmentation and full-size crops of a square image: every cutout is the image itself
    square = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    plain = Cutouts((32, 32), count=3, min_scale=1.0, flip=0.0, max_rotate=0.0, max_shear=0.0, noise=0.0)
    torch.testing.assert_close(plain(square), square.expand(3, -1, -1, -1), atol=1e-5, rtol=0)
    # always-flip mirrors it horizontally
    flipped = Cutouts((32, 32), count=1, min_scale=1.0, flip=1.0, max_rotate=0.0, max_shear=0.0, noise=0.0)
    torch.testing.assert_close(flipped(square), torch.flip(square, dims=[-1]), atol=1e-5, rtol=0)


def test_auto_min_scale():
    assert auto_min_scale((64, 64), (64, 64)) == 0.7
    assert auto_min_scale((224, 224), (64, 64)) == pytest.approx(64 / 224)
    assert auto_min_scale((1024, 1024), (64, 64)) == 0.25


@pytest.mark.parametrize("cls", [PixelImage, FourierImage])
def test_param_init_reproduces_image_and_seed_decides_start(cls):
    init = torch.rand(1, 3, 24, 40, generator=torch.Generator().manual_seed(0)).clamp(0.01, 0.99)
    torch.testing.assert_close(cls(24, 40, init=init)(), init, atol=1e-4, rtol=0)
    x1 = cls(24, 40, generator=torch.Generator().manual_seed(5))()
    x2 = cls(24, 40, generator=torch.Generator().manual_seed(5))()
    x3 = cls(24, 40, generator=torch.Generator().manual_seed(6))()
    assert x1.shape == (1, 3, 24, 40) and 0 <= x1.min() and x1.max() <= 1
    torch.testing.assert_close(x1, x2)
    assert not torch.equal(x1, x3)


def test_make_param_errors():
    with pytest.raises(KontrastError, match="unknown parameterisation"):
        make_param("wavelets", 8, 8)
    with pytest.raises(KontrastError, match="--vqgan-checkpoint"):
        make_param("vqgan", 8, 8)


def test_lr_schedules():
    lrs = [lr_at(s, 100, 1.0, "cosine", warmup=0.1, final_ratio=0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(lrs[9:]))  # non-increasing after warm-up
    assert lrs[-1] == pytest.approx(0.1, abs=0.01)
    steps = [lr_at(s, 90, 1.0, "step", warmup=0.0) for s in range(90)]
    assert sorted({round(x, 6) for x in steps}, reverse=True) == [1.0, 0.3, 0.09]
    assert lr_at(50, 100, 0.2, "constant", warmup=0.0) == 0.2
    with pytest.raises(KontrastError, match="unknown schedule"):
        lr_at(0, 10, 1.0, "linear")


def test_generated_images_match_their_own_prompt(fixture_model):
    """Confusion-matrix check: every image is most similar to its own prompt; every score rises."""
    model, preprocess, tokenizer = fixture_model
    cfg = GenerateConfig(steps=40, size=(64, 64), param="pixels", lr=0.1, cutouts=8, seed=0)
    images, rises = [], []
    for text in PROMPTS:
        result = generate(model, tokenizer, [text], cfg)
        assert len(result.scores) == 40 and result.tensor.shape == (3, 64, 64)
        first, last = sum(result.scores[:5]) / 5, sum(result.scores[-5:]) / 5
        rises.append((result.scores[0], last, result.final_score))
        assert last > first + 0.3 and result.final_score > result.scores[0] + 0.3, (text, rises[-1])
        images.append(result.tensor)
    text_features = encode_prompts(model, tokenizer, [Prompt(t) for t in PROMPTS])
    sims = similarity_matrix(model, torch.stack(images), text_features, preprocess.mean, preprocess.std, (64, 64))
    assert sims.shape == (3, 3)
    for i in range(3):
        others = [sims[i, j] for j in range(3) if j != i]
        assert sims[i, i] > max(others), f"row {i} ({PROMPTS[i]}): {sims.tolist()}"


def test_objective_applies_the_model_normalisation(fixture_model):
    """A [0, 1] view encoded by the objective equals the model's own preprocess + encode_image."""
    model, preprocess, _tokenizer = fixture_model
    pil = to_pil(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    x = torch.frombuffer(bytearray(pil.tobytes()), dtype=torch.uint8).reshape(64, 64, 3)
    x = x.permute(2, 0, 1)[None].float() / 255  # [H, W, 3] -> [1, 3, H, W]
    objective = ClipObjective(model, torch.randn(1, model.embed_dim), [1.0], Cutouts((64, 64), count=1),
                              preprocess.mean, preprocess.std)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.encode_image(preprocess(pil)[None]), dim=-1)
        torch.testing.assert_close(objective.encode(x), expected, atol=1e-5, rtol=1e-4)


def test_same_seed_same_image_and_model_left_as_found(fixture_model):
    model, _, tokenizer = fixture_model
    model.train()
    model.visual.requires_grad_(True)
    flags = [p.requires_grad for p in model.parameters()]
    cfg = GenerateConfig(steps=4, size=(48, 48), param="fourier", cutouts=4, seed=7)
    seen = []
    a = generate(model, tokenizer, ["a red heart:1", "blurry:-0.5"], cfg, progress=seen.append)
    b = generate(model, tokenizer, ["a red heart:1", "blurry:-0.5"], cfg)
    c = generate(model, tokenizer, ["a red heart:1", "blurry:-0.5"], GenerateConfig(**{**cfg.__dict__, "seed": 8}))
    assert torch.equal(a.tensor, b.tensor) and a.scores == b.scores
    assert not torch.equal(a.tensor, c.tensor)
    assert [s.step for s in seen] == [1, 2, 3, 4] and all(s.steps == 4 for s in seen)
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    model.eval()


def test_init_image_is_the_start(fixture_model, tmp_path):
    model, _, tokenizer = fixture_model
    Image.new("RGB", (40, 20), (200, 30, 30)).save(tmp_path / "red.png")
    init = load_init_image(tmp_path / "red.png", (32, 32))
    assert init.shape == (1, 3, 32, 32)
    torch.testing.assert_close(init[0, :, 0, 0], torch.tensor([200, 30, 30]) / 255)
    seen = []
    cfg = GenerateConfig(steps=2, size=(32, 32), param="fourier", lr=1e-4, cutouts=2, init_weight=1.0)
    result = generate(model, tokenizer, ["a red heart"], cfg, init_image=init, progress=seen.append)
    assert (result.tensor - init[0]).abs().max() < 0.02
    assert "init_loss" in seen[0].stats and seen[0].stats["init_loss"] < 1e-4


def test_total_variation_term_smooths(fixture_model):
    model, _, tokenizer = fixture_model
    runs = {}
    for tv in (0.0, 50.0):
        seen = []
        cfg = GenerateConfig(steps=8, size=(32, 32), param="pixels", lr=0.1, cutouts=2, tv_weight=tv)
        runs[tv] = (generate(model, tokenizer, ["a red heart"], cfg, progress=seen.append), seen)
    assert "tv_loss" in runs[50.0][1][0].stats and "tv_loss" not in runs[0.0][1][0].stats
    assert total_variation(runs[50.0][0].tensor) < total_variation(runs[0.0][0].tensor)


def test_generate_rejects_bad_settings(fixture_model):
    model, _, tokenizer = fixture_model
    with pytest.raises(KontrastError, match="positive prompt"):
        generate(model, tokenizer, ["blurry:-1"], GenerateConfig(steps=1))
    with pytest.raises(KontrastError, match="--steps"):
        generate(model, tokenizer, ["a cat"], GenerateConfig(steps=0))
    with pytest.raises(KontrastError, match="no prompt"):
        generate(model, tokenizer, [], GenerateConfig(steps=1))


def test_to_pil_round_trip():
    x = torch.rand(1, 3, 5, 7)
    img = to_pil(x)
    assert img.size == (7, 5) and img.mode == "RGB"
    assert abs(img.getpixel((3, 2))[1] / 255 - float(x[0, 1, 2, 3])) <= 1 / 255


def test_cli_generate_frames_gif(fixtures_dir, tmp_path, capsys):
    out, frames, gif = tmp_path / "heart.png", tmp_path / "frames", tmp_path / "run.gif"
    rc = main(["generate", "an emoji of a red heart:1", "blurry:-0.3", "--negative", "dark",
               "--model", str(fixtures_dir / "openai_vit.pt"), "--param", "pixels", "--steps", "6",
               "--size", "48x32", "--cutouts", "4", "--seed", "1", "--out", str(out),
               "--frames", str(frames), "--gif", str(gif), "--frame-every", "2"])
    assert rc == 0
    assert Image.open(out).size == (48, 32)
    assert sorted(p.name for p in frames.iterdir()) == [f"frame_{i:05d}.png" for i in range(4)]  # steps 0,2,4 + final
    with Image.open(gif) as anim:
        assert anim.n_frames >= 2 and anim.is_animated
    printed = capsys.readouterr().out
    assert "CLIP score" in printed and str(out) in printed


@pytest.mark.parametrize("extra, message", [
    (["--size", "big"], "--size 'big'"),
    (["--init", "/nonexistent/init.png"], "/nonexistent/init.png"),
    (["--param", "vqgan"], "--vqgan-checkpoint"),
    (["--vqgan-config", "x.yaml"], "only apply with --param vqgan"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--out", "/nonexistent/dir/x.png"], "does not exist"),
])
def test_cli_errors_are_one_line(fixtures_dir, tmp_path, capsys, extra, message):
    args = ["generate", "a cat", "--model", str(fixtures_dir / "openai_vit.pt"), "--out", str(tmp_path / "x.png")]
    assert main(args + extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err
