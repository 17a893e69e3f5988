"""VQGAN parameterisation: a tiny randomly initialised checkpoint in taming-transformers' exact format.

The state dict is built here from taming's architecture description (encoder, decoder, codebook,
quant convs, loss weights), independently of kontrast's module, so a naming slip in kontrast's
decoder shows up as a load failure.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch
import yaml
from PIL import Image

import kontrast
from kontrast.cli import main
from kontrast.errors import CheckpointError, KontrastError
from kontrast.generate import GenerateConfig, VQGANConfig, VQGANImage, generate, load_vqgan

DDCONFIG = {"double_z": False, "z_channels": 16, "resolution": 32, "in_channels": 3, "out_ch": 3, "ch": 32,
            "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [16], "dropout": 0.0}
EMBED_DIM, N_EMBED = 8, 32


def taming_yaml(n_embed: int = N_EMBED, target: str = "taming.models.vqgan.VQModel") -> dict:
    return {"model": {"base_learning_rate": 4.5e-6, "target": target, "params": {
        "embed_dim": EMBED_DIM, "n_embed": n_embed, "ddconfig": dict(DDCONFIG),
        "lossconfig": {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                       "params": {"disc_conditional": False, "disc_in_channels": 3, "disc_start": 10000,
                                  "disc_weight": 0.8, "codebook_weight": 1.0}}}}}


def taming_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Every tensor of a taming ``VQModel`` with ``DDCONFIG`` (names and shapes as taming writes them)."""
    gen = torch.Generator().manual_seed(seed)
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, cin: int, cout: int, k: int) -> None:
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (cout, cin, k, k), (cout,)

    def norm(name: str, c: int) -> None:
        shapes[f"{name}.weight"] = shapes[f"{name}.bias"] = (c,)

    def resnet(name: str, cin: int, cout: int) -> None:
        norm(f"{name}.norm1", cin), conv(f"{name}.conv1", cin, cout, 3)
        norm(f"{name}.norm2", cout), conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{name}.nin_shortcut", cin, cout, 1)

    def attn(name: str, c: int) -> None:
        norm(f"{name}.norm", c)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{part}", c, c, 1)

    ch, mult, nrb, z = DDCONFIG["ch"], DDCONFIG["ch_mult"], DDCONFIG["num_res_blocks"], DDCONFIG["z_channels"]
    levels, attn_res = len(mult), DDCONFIG["attn_resolutions"]
    # encoder
    conv("encoder.conv_in", 3, ch, 3)
    res, in_mult = DDCONFIG["resolution"], [1] + mult
    for i in range(levels):
        block_in, block_out = ch * in_mult[i], ch * mult[i]
        for j in range(nrb):
            resnet(f"encoder.down.{i}.block.{j}", block_in, block_out)
            block_in = block_out
            if res in attn_res:
                attn(f"encoder.down.{i}.attn.{j}", block_in)
        if i != levels - 1:
            conv(f"encoder.down.{i}.downsample.conv", block_in, block_in, 3)
            res //= 2
    resnet("encoder.mid.block_1", block_in, block_in), attn("encoder.mid.attn_1", block_in)
    resnet("encoder.mid.block_2", block_in, block_in)
    norm("encoder.norm_out", block_in), conv("encoder.conv_out", block_in, z, 3)
    # decoder
    block_in = ch * mult[-1]
    conv("decoder.conv_in", z, block_in, 3)
    resnet("decoder.mid.block_1", block_in, block_in), attn("decoder.mid.attn_1", block_in)
    resnet("decoder.mid.block_2", block_in, block_in)
    for i in reversed(range(levels)):
        block_out = ch * mult[i]
        for j in range(nrb + 1):
            resnet(f"decoder.up.{i}.block.{j}", block_in, block_out)
            block_in = block_out
            if res in attn_res:
                attn(f"decoder.up.{i}.attn.{j}", block_in)
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", block_in, block_in, 3)
            res *= 2
    norm("decoder.norm_out", block_in), conv("decoder.conv_out", block_in, 3, 3)
    # codebook, quant convs, loss (perceptual net + discriminator) as in a trained checkpoint
    shapes["quantize.embedding.weight"] = (N_EMBED, EMBED_DIM)
    conv("quant_conv", z, EMBED_DIM, 1), conv("post_quant_conv", EMBED_DIM, z, 1)
    shapes["loss.logvar"] = ()
    conv("loss.perceptual_loss.net.slice1.0", 3, 64, 3)
    shapes["loss.perceptual_loss.lin0.model.1.weight"] = (1, 64, 1, 1)
    conv("loss.discriminator.main.0", 3, 64, 4)
    return {k: torch.randn(s, generator=gen) * 0.1 for k, s in shapes.items()}


@pytest.fixture(scope="module")
def vqgan_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vqgan")
    (folder / "model.yaml").write_text(yaml.safe_dump(taming_yaml()))
    sd = taming_state_dict()
    torch.save({"state_dict": sd, "global_step": 12345, "epoch": 3, "pytorch-lightning_version": "1.0.8"},
               folder / "last.ckpt")
    return folder / "last.ckpt", folder / "model.yaml", sd


@pytest.fixture(scope="module")
def fixture_model(fixtures_dir):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield kontrast.load(fixtures_dir / "openai_vit.pt")
    torch.set_num_threads(threads)


def test_config_from_taming_yaml(vqgan_files):
    cfg = VQGANConfig.from_yaml(vqgan_files[1])
    assert (cfg.n_embed, cfg.embed_dim, cfg.z_channels, cfg.ch, cfg.ch_mult) == (N_EMBED, EMBED_DIM, 16, 32, (1, 2))
    assert cfg.attn_resolutions == (16,) and cfg.downsample == 2


def test_load_takes_decoder_codebook_and_post_quant_conv(vqgan_files):
    ckpt, config, sd = vqgan_files
    model = load_vqgan(ckpt, config)
    own = model.state_dict()
    assert set(own) == {k for k in sd if k.startswith(("decoder.", "post_quant_conv.", "quantize."))}
    for key, value in own.items():
        assert torch.equal(value, sd[key]), key


def test_decode_latent_and_straight_through_gradient(vqgan_files):
    model = load_vqgan(*vqgan_files[:2])
    z = model.random_latent(32, 24, generator=torch.Generator().manual_seed(0))
    assert z.shape == (1, EMBED_DIM, 16, 12)
    codes = model.quantize.embedding.weight
    # every cell of a random latent is a codebook row
    flat = z.permute(0, 2, 3, 1).reshape(-1, EMBED_DIM)  # [1, D, h, w] -> [h*w, D]
    assert (flat[:, None] - codes[None]).abs().sum(-1).min(dim=1).values.max() == 0  # [h*w, K]
    image = model.decode(z)
    assert image.shape == (1, 3, 32, 24) and 0 <= image.min() and image.max() <= 1
    # a small nudge snaps back to the same codes in the forward pass, yet gradients reach the latent
    nudged = (z + 1e-4 * torch.randn(z.shape, generator=torch.Generator().manual_seed(1))).requires_grad_(True)
    out = model.decode(nudged)
    torch.testing.assert_close(out, image)
    out.mean().backward()
    assert nudged.grad is not None and nudged.grad.abs().sum() > 0


def test_one_optimisation_step_moves_the_latent_only(vqgan_files, fixture_model):
    clip, _, tokenizer = fixture_model
    decoder = load_vqgan(*vqgan_files[:2])
    before = {k: v.clone() for k, v in decoder.state_dict().items()}
    param = VQGANImage(decoder, 32, 32, generator=torch.Generator().manual_seed(0))
    start = param.latent.detach().clone()
    result = generate(clip, tokenizer, ["a red heart"], GenerateConfig(steps=1, size=(32, 32), param="vqgan",
                                                                       cutouts=2), param=param)
    assert result.image.size == (32, 32) and len(result.scores) == 1
    assert not torch.equal(param.latent.detach(), start)
    assert all(torch.equal(v, before[k]) for k, v in decoder.state_dict().items())


def test_init_image_acts_through_the_mse_term(vqgan_files, fixture_model, tmp_path):
    clip, _, tokenizer = fixture_model
    decoder = load_vqgan(*vqgan_files[:2])
    init = torch.full((1, 3, 32, 32), 0.8)
    seen = []
    generate(clip, tokenizer, ["a red heart"], GenerateConfig(steps=2, size=(32, 32), param="vqgan", cutouts=2,
                                                              init_weight=1.0),
             init_image=init, vqgan=decoder, progress=seen.append)
    assert all("init_loss" in s.stats for s in seen)


def test_cli_generate_vqgan_one_step(vqgan_files, fixtures_dir, tmp_path, capsys):
    ckpt, config, _ = vqgan_files
    Image.new("RGB", (32, 32), (10, 200, 30)).save(tmp_path / "init.png")
    out = tmp_path / "vq.png"
    rc = main(["generate", "a red heart", "--param", "vqgan", "--vqgan-checkpoint", str(ckpt),
               "--vqgan-config", str(config), "--model", str(fixtures_dir / "openai_vit.pt"), "--steps", "1",
               "--size", "33", "--cutouts", "2", "--init", str(tmp_path / "init.png"), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert Image.open(out).size == (32, 32)  # rounded down to whole latent cells (2 px each)


def _lightning_ckpt(path, sd) -> None:
    """A checkpoint pickling a class from a module that is gone at load time (like Lightning callbacks)."""
    module = types.ModuleType("fake_lightning_callbacks")

    class ModelCheckpoint:
        def __init__(self, monitor: str) -> None:
            self.monitor = monitor

    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = module.__name__, "ModelCheckpoint"
    module.ModelCheckpoint = ModelCheckpoint
    sys.modules[module.__name__] = module
    try:
        torch.save({"state_dict": sd, "global_step": 7, "callbacks": {ModelCheckpoint: {"best_model_score": 0.5}},
                    "hyper_parameters": ModelCheckpoint("val/rec_loss")}, path)
    finally:
        del sys.modules[module.__name__]


def test_lightning_checkpoint_needs_trust(vqgan_files, tmp_path):
    _, config, sd = vqgan_files
    path = tmp_path / "lightning.ckpt"
    _lightning_ckpt(path, sd)
    with pytest.raises(CheckpointError, match="--trust-checkpoint") as info:
        load_vqgan(path, config)
    assert "\n" not in str(info.value)
    model = load_vqgan(path, config, trust_checkpoint=True)
    torch.testing.assert_close(model.quantize.embedding.weight, sd["quantize.embedding.weight"])


def _write(path, text: str):
    path.write_text(text)
    return path


@pytest.mark.parametrize("case, message", [
    ("missing_ckpt", "VQGAN checkpoint not found"),
    ("missing_config", "VQGAN config not found"),
    ("not_taming", "not a taming-transformers VQGAN model.yaml"),
    ("gumbel", "is not supported"),
    ("wrong_shape", "quantize.embedding.weight is (32, 8), config wants (64, 8)"),
    ("encoder_only", "missing decoder."),
    ("garbage", "cannot read VQGAN checkpoint"),
])
def test_cli_vqgan_errors_are_one_line(case, message, vqgan_files, fixtures_dir, tmp_path, capsys):
    ckpt, config, sd = vqgan_files
    if case == "missing_ckpt":
        ckpt = tmp_path / "nope.ckpt"
    elif case == "missing_config":
        config = tmp_path / "nope.yaml"
    elif case == "not_taming":
        config = _write(tmp_path / "other.yaml", yaml.safe_dump({"model": {"name": "ViT-B-32", "layers": [1, 2]}}))
    elif case == "gumbel":
        config = _write(tmp_path / "gumbel.yaml", yaml.safe_dump(taming_yaml(target="taming.models.vqgan.GumbelVQ")))
    elif case == "wrong_shape":
        config = _write(tmp_path / "big.yaml", yaml.safe_dump(taming_yaml(n_embed=64)))
    elif case == "encoder_only":
        ckpt = tmp_path / "encoder.ckpt"
        torch.save({"state_dict": {k: v for k, v in sd.items() if not k.startswith("decoder.")}}, ckpt)
    elif case == "garbage":
        ckpt = tmp_path / "garbage.ckpt"
        ckpt.write_bytes(b"this is not a checkpoint")
    rc = main(["generate", "a cat", "--param", "vqgan", "--vqgan-checkpoint", str(ckpt), "--vqgan-config",
               str(config), "--model", str(fixtures_dir / "openai_vit.pt"), "--steps", "1", "--out",
               str(tmp_path / "x.png")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err, err


def test_library_errors_are_kontrast_errors(tmp_path):
    with pytest.raises(KontrastError, match="not a taming"):
        VQGANConfig.from_yaml(_write(tmp_path / "list.yaml", "- 1\n- 2\n"))
    with pytest.raises(KontrastError, match="cannot read VQGAN config"):
        VQGANConfig.from_yaml(_write(tmp_path / "bad.yaml", "model: [unclosed\n"))
