"""Zero-shot localisation: map shapes for every tower type, exact identities of the dense features, a constructed
case whose answer is known, boxes, overlays, the ``kontrast locate`` command and the server's ``/locate`` route."""

from __future__ import annotations

import copy
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import kontrast
from kontrast.config import ModelConfig, TextConfig, VisionConfig
from kontrast.locate import boxes_from_map, locate, overlay
from kontrast.locate.boxes import components
from kontrast.models import CLIP
from kontrast.models.dense import dense_features

FAMILIES = Path(__file__).resolve().parent / "fixtures" / "families"


def _tiny(vision: VisionConfig) -> CLIP:
    cfg = ModelConfig(embed_dim=16, vision=vision, text=TextConfig(context_length=16, width=32, heads=2, layers=1))
    torch.manual_seed(0)
    return CLIP(cfg).eval()


def tiny_vit(layers: int = 2) -> CLIP:
    return _tiny(VisionConfig(image_size=32, layers=layers, width=32, patch_size=8, head_width=16))


def tiny_resnet(image_size: int = 64) -> CLIP:
    return _tiny(VisionConfig(image_size=image_size, layers=(1, 1, 1, 1), width=8, patch_size=None))


def convnext_model():
    model, _, _ = kontrast.load(FAMILIES / "convnext_open_clip")
    return model


def siglip_model():
    model, _, tokenizer = kontrast.load(FAMILIES / "siglip_open_clip")
    return model, tokenizer


def _ids(model, n: int) -> torch.Tensor:
    return torch.randint(1, 1000, (n, model.context_length))


@pytest.mark.parametrize("method", ["maskclip", "clearclip", "tokens", "crops"])
@pytest.mark.parametrize("tower", ["vit", "resnet", "siglip", "convnext"])
def test_map_shapes_for_every_tower(tower, method):
    if tower == "siglip":
        model, tokenizer = siglip_model()
        ids, side = tokenizer(["a cat", "a dog", "a bird"]), model.image_size
        grid = side // model.visual.patch_size
    elif tower == "convnext":
        model = convnext_model()
        ids, side = _ids(model, 3), model.image_size
        grid = side // 32
    else:
        model = tiny_vit() if tower == "vit" else tiny_resnet()
        ids, side = _ids(model, 3), model.image_size
        grid = side // (8 if tower == "vit" else 32)
    pixels = torch.randn(2, 3, side, side)
    loc = model.locate(pixels, ids, method=method)
    assert loc.grid.shape == (2, 3, grid, grid)
    assert loc.maps.shape == (2, 3, side, side)
    assert torch.isfinite(loc.maps).all() and loc.grid.abs().max() <= 1.0 + 1e-5  # cosine similarities


@pytest.mark.parametrize("tower", ["vit", "resnet", "siglip"])
def test_larger_input_gives_a_finer_grid(tower):
    if tower == "siglip":
        model, _ = siglip_model()
        patch = model.visual.patch_size
    else:
        model = tiny_vit() if tower == "vit" else tiny_resnet()
        patch = 8 if tower == "vit" else 32
    side = 2 * model.image_size
    feats = torch.randn(1, model.embed_dim)
    loc = locate(model, torch.randn(1, 3, side, side), feats)
    assert loc.grid.shape == (1, 1, side // patch, side // patch)


def test_siglip_maskclip_is_the_pooled_embedding_when_all_patches_agree():
    """With identical patch tokens (a flat image, no position embeddings) the attention-pool head's output is its
    value path on that token whatever the attention weights: every dense feature equals the image embedding."""
    model, _ = siglip_model()
    with torch.no_grad():
        model.visual.positional_embedding.zero_()
        flat = torch.full((1, 3, model.image_size, model.image_size), 0.3)
        pooled = model.encode_image(flat)[0]
        dense = dense_features(model.visual, flat, "maskclip")[0]  # [g, g, E]
    torch.testing.assert_close(dense, pooled.expand_as(dense), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        for method in ("tokens", "clearclip"):  # each token as the query, or queries against queries: the same here
            tokens = dense_features(model.visual, flat, method)[0]
            torch.testing.assert_close(tokens, pooled.expand_as(tokens), atol=1e-5, rtol=1e-5)


def test_resnet_maskclip_is_the_attention_pool_on_one_cell():
    """At 32 px the last feature map has one cell; with no position embeddings the pool's mean token equals that
    cell, so the pooled embedding is exactly the value path of the cell."""
    model = tiny_resnet(image_size=32)
    with torch.no_grad():
        model.visual.attnpool.positional_embedding.zero_()
        pixels = torch.randn(2, 3, 32, 32)
        pooled = model.encode_image(pixels)
        dense = dense_features(model.visual, pixels, "maskclip")  # [2, 1, 1, E]
    torch.testing.assert_close(dense[:, 0, 0], pooled, atol=1e-5, rtol=1e-5)


def test_convnext_dense_is_the_head_per_cell():
    """A ConvNeXt pools by a mean: on a flat feature map (one cell) the head on that cell is the image embedding."""
    model = convnext_model()
    pixels = torch.randn(2, 3, 32, 32)  # 32 px: one cell after the stride-32 trunk
    with torch.no_grad():
        pooled = model.encode_image(pixels)
        dense = dense_features(model.visual, pixels)
    assert dense.shape == (2, 1, 1, pooled.shape[1])
    torch.testing.assert_close(dense[:, 0, 0], pooled, atol=1e-5, rtol=1e-5)


def test_vit_tokens_method_is_the_last_layer_tokens_projected():
    model = tiny_vit()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = model.encode_image(pixels, output="tokens")  # [2, 16, W], last block
        expected = model.visual.ln_post(tokens) @ model.visual.proj
        dense = dense_features(model.visual, pixels, "tokens")
    torch.testing.assert_close(dense.reshape(2, 16, -1), expected)


def test_vit_clearclip_pools_tokens_by_query_similarity():
    """ClearCLIP = MaskCLIP after query-query attention: equal where all tokens agree (uniform attention over
    identical values), different where they do not; it never reads the class token."""
    model = tiny_vit(layers=1)
    with torch.no_grad():
        model.visual.positional_embedding.zero_()
        flat = torch.full((1, 3, 32, 32), 0.5)
        torch.testing.assert_close(dense_features(model.visual, flat, "clearclip"),
                                   dense_features(model.visual, flat, "maskclip"))
        pixels = torch.randn(1, 3, 32, 32)
        clear = dense_features(model.visual, pixels, "clearclip")
        assert not torch.allclose(clear, dense_features(model.visual, pixels, "maskclip"))
        model.visual.class_embedding.add_(1.0)
        torch.testing.assert_close(dense_features(model.visual, pixels, "clearclip"), clear)


def test_vit_maskclip_skips_query_key_mixing():
    """MaskCLIP's value path: a patch's feature depends on the last block's input at that patch only, so changing
    other patches' last-block inputs (here: a 1-layer model, other pixels) leaves it unchanged."""
    model = tiny_vit(layers=1)
    with torch.no_grad():
        a = torch.randn(1, 3, 32, 32)
        b = a.clone()
        b[:, :, 16:, :] = torch.randn(1, 3, 16, 32)  # change the bottom half only
        fa, fb = dense_features(model.visual, a, "maskclip"), dense_features(model.visual, b, "maskclip")
        ta, tb = dense_features(model.visual, a, "tokens"), dense_features(model.visual, b, "tokens")
    torch.testing.assert_close(fa[:, :2], fb[:, :2])  # top two rows of cells: untouched
    assert not torch.allclose(ta[:, :2], tb[:, :2])  # the naive tokens mix in the changed half


def _red_square_image() -> tuple[Image.Image, tuple[int, int, int, int]]:
    """A 120 x 80 white picture with a red 24 px square (x 70..94, y 30..54) and a blue one elsewhere."""
    img = Image.new("RGB", (120, 80), (255, 255, 255))
    img.paste((220, 20, 20), (70, 30, 94, 54))
    img.paste((20, 40, 220), (22, 8, 46, 32))
    return img, (70, 30, 94, 54)


def test_constructed_case_maximum_lands_on_the_red_square():
    """A 1-layer ViT with no position embeddings gives identical MaskCLIP features to identical patches; querying
    with the feature of a red patch must peak on the red square, in the SOURCE image's pixels (the 120 x 80 image
    is resized and centre-cropped to 32 x 32 by the model's preprocessing, at 64 px for the map)."""
    model = tiny_vit(layers=1)
    with torch.no_grad():
        model.visual.positional_embedding.zero_()
    red = torch.zeros(1, 3, 8, 8)
    red[:, 0], red[:, 1], red[:, 2] = 1.2, -1.5, -1.3  # a normalised red patch, as preprocessing gives
    with torch.no_grad():
        query = dense_features(model.visual, red.repeat(1, 1, 4, 4), "maskclip")[0, 0, 0][None]  # [1, E]
    img, (x0, y0, x1, y1) = _red_square_image()
    loc = locate(model, [img], query, size=64, method="maskclip")
    assert loc.grid.shape == (1, 1, 8, 8)
    assert loc.regions[0] == pytest.approx((20.0, 0.0, 100.0, 80.0))  # the centre crop of 120 x 80
    px, py = loc.peak_in_source(0, 0)
    assert x0 <= px < x1 and y0 <= py < y1, (px, py)


def test_locate_restores_training_mode_and_checks_method():
    model = tiny_vit().train()
    locate(model, torch.randn(1, 3, 32, 32), torch.randn(1, 16))
    assert model.training
    with pytest.raises(ValueError, match="method 'gradcam' is not one of"):
        locate(model, torch.randn(1, 3, 32, 32), torch.randn(1, 16), method="gradcam")


def test_boxes_from_map():
    heat = np.zeros((6, 8))
    heat[1:3, 1:3] = 1.0  # a 2x2 blob
    heat[4, 5:8] = 0.8  # a 1x3 bar
    heat[0, 7] = 0.3  # below the threshold
    boxes = boxes_from_map(heat, threshold=0.5)
    assert [(b.x0, b.y0, b.x1, b.y1, b.area) for b in boxes] == [(1, 1, 3, 3, 4), (5, 4, 8, 5, 3)]
    assert boxes[0].score == 1.0 and boxes[1].score == 0.8
    assert boxes_from_map(np.ones((3, 3))) == []  # a flat map has no region
    assert len(components(np.eye(3, dtype=bool))) == 3  # diagonal cells are not 4-connected
    scaled = boxes[0].scaled(10, 10, 5, 0)
    assert (scaled.x0, scaled.y0, scaled.x1, scaled.y1) == (15, 10, 35, 30)
    with pytest.raises(ValueError, match="threshold"):
        boxes_from_map(heat, threshold=1.5)


def test_overlay_colours_the_region_and_dims_the_rest():
    img = Image.new("RGB", (40, 20), (200, 200, 200))
    heat = np.zeros((4, 4))
    heat[0, 0] = 1.0
    out = overlay(img, heat, region=(10, 0, 30, 20), alpha=0.5)
    assert out.size == (40, 20)
    px = np.asarray(out, dtype=int)
    assert (px[:, :10] == 70).all() and (px[:, 30:] == 70).all()  # outside the crop: dimmed to 35 %
    assert not (px[:, 10:30] == px[0, 10]).all()  # inside: the heat's colours vary


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kontrast", "locate", *argv], check=False, capture_output=True, text=True,
                          timeout=300)


def test_locate_command_writes_overlays_and_boxes(tmp_path):
    img, _ = _red_square_image()
    path = tmp_path / "pic.png"
    img.save(path)
    proc = _cli(str(path), "a red square", "a blue square", "--boxes", "--json", "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["text"] for r in lines] == ["a red square", "a blue square"]
    for r in lines:
        picture = Image.open(r["overlay"])
        assert picture.size == (120, 80) and Path(r["overlay"]).parent == tmp_path / "out"
        assert 0 <= r["peak"][0] <= 120 and 0 <= r["peak"][1] <= 80
        assert r["boxes"] and all(20 <= b["x0"] < b["x1"] <= 100 for b in r["boxes"])  # inside the crop
    single = _cli(str(path), "a red square", "--out", str(tmp_path / "one.png"))
    assert single.returncode == 0 and (tmp_path / "one.png").is_file()
    assert "peak at" in single.stdout


def test_locate_command_errors_are_one_line(tmp_path):
    missing = _cli(str(tmp_path / "nope.png"), "a cat")
    assert missing.returncode == 2 and "nope.png" in missing.stderr and "Traceback" not in missing.stderr
    (tmp_path / "bad.png").write_bytes(b"not an image")
    bad = _cli(str(tmp_path / "bad.png"), "a cat")
    assert bad.returncode == 2 and "bad.png" in bad.stderr and "Traceback" not in bad.stderr
    img, _ = _red_square_image()
    img.save(tmp_path / "pic.png")
    threshold = _cli(str(tmp_path / "pic.png"), "a cat", "--threshold", "2")
    assert threshold.returncode == 2 and "--threshold" in threshold.stderr


def test_server_locate_route(tmp_path, data_dir, fixtures_dir):
    from fastapi.testclient import TestClient
    from test_server import build_small_index

    from kontrast.search.query import Searcher
    from kontrast.search.server import create_app

    folder, _ = build_small_index(tmp_path / "data", data_dir / "emoji_sample", str(fixtures_dir / "openai_vit.pt"), n=4)
    client = TestClient(create_app(Searcher.open(str(folder))), base_url="http://127.0.0.1")  # Host is checked
    item = client.get("/search", params={"q": "an emoji", "k": 1}).json()["results"][0]
    response = client.get(f"/locate/{item['id']}", params={"q": "an emoji of a face", "size": 256})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    picture = Image.open(io.BytesIO(response.content))
    assert max(picture.size) <= 256
    again = client.get(f"/locate/{item['id']}", params={"q": "an emoji of a face", "size": 256})
    assert again.content == response.content  # cached
    assert client.get(f"/locate/{item['id']}", params={"q": "x", "method": "gradcam"}).status_code == 422
    assert client.get(f"/locate/{item['id']}", params={"q": "x", "size": 300}).status_code == 422
    assert client.get("/locate/999999", params={"q": "x"}).status_code == 404


def test_bf16_model_locates_too():
    model = tiny_vit()
    m16 = copy.deepcopy(model).to(torch.bfloat16)
    pixels = torch.randn(1, 3, 32, 32)
    feats = torch.randn(1, 16)
    a = locate(model, pixels, feats).grid
    b = locate(m16, pixels, feats).grid
    assert b.dtype == torch.float32 and torch.allclose(a, b, atol=0.05)


def test_grid_composite_places_each_picture_in_its_cell():
    from kontrast.locate.views import grid_composite

    pictures = [Image.new("RGB", (64, 40), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    canvas, boxes = grid_composite(pictures, cell=50)
    assert canvas.size == (100, 100) and boxes == [(0, 0, 50, 50), (50, 0, 100, 50), (0, 50, 50, 100)]
    px = canvas.load()
    assert px[25, 25] == (255, 0, 0) and px[75, 25] == (0, 255, 0) and px[25, 75] == (0, 0, 255)
    assert px[75, 75] == (255, 255, 255)  # no fourth picture: white
