"""Sigmoid models everywhere: every place that shows zero-shot probabilities gives SigLIP models (and CLIP models
trained with the SigLIP loss) ``sigmoid(exp(logit_scale) * cos + logit_bias)`` per label, not a softmax; the ONNX back
end keeps the bias and the checkpoint's own tokenizer; fine-tuning a SigLIP model uses the SigLIP loss by default.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import kontrast
from kontrast import zeroshot
from kontrast.cli import main

FAMILIES = Path(__file__).parent / "fixtures" / "families"
SIGLIP = FAMILIES / "siglip_hf"
IMAGES = Path("/work/shared/fixtures/preprocess")
LABELS = ["cat", "dog", "a red heart"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KONTRAST_CACHE", str(tmp_path / "cache"))
    zeroshot.clear_memory_cache()


@torch.no_grad()
def _sigmoid_reference(model, preprocess, tokenizer, image, labels, templates=("{}",)) -> torch.Tensor:
    """sigmoid(scale * cos + bias) of one image and each label's prompt-ensemble embedding, computed by hand."""
    img = F.normalize(model.encode_image(preprocess(image).unsqueeze(0)), dim=-1)
    rows = []
    for label in labels:
        txt = F.normalize(model.encode_text(tokenizer([t.replace("{}", label) for t in templates])), dim=-1)
        rows.append(F.normalize(txt.mean(0), dim=-1))
    cos = img @ torch.stack(rows).T
    return torch.sigmoid(model.logit_scale.exp() * cos + model.logit_bias)[0]


def test_clip_with_a_logit_bias_is_a_sigmoid_model():
    """A CLIP trained with the SigLIP loss (it has a logit_bias) gives sigmoid probabilities; without one, softmax."""
    model = kontrast.create_model("tiny-ViT", init_logit_bias=-5.0)
    plain = kontrast.create_model("tiny-ViT")
    assert model.sigmoid and not plain.sigmoid
    feats, classifier = torch.randn(2, model.embed_dim), F.normalize(torch.randn(3, model.embed_dim), dim=-1)
    cos = F.normalize(feats, dim=-1) @ classifier.T
    want = torch.sigmoid(model.logit_scale.detach().exp() * cos - 5.0)
    torch.testing.assert_close(zeroshot.classify(model, feats, classifier), want)
    torch.testing.assert_close(zeroshot.classify(plain, feats, classifier).sum(-1), torch.ones(2))


def test_cli_classify_gives_sigmoid_scores(capsys):
    model, preprocess, tokenizer = kontrast.load(SIGLIP)
    image = IMAGES / "rgb_300x200.png"
    assert main(["classify", str(image), "--labels", *LABELS, "--templates", "{}", "--json", "--no-progress",
                 "--model", str(SIGLIP)]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    want = _sigmoid_reference(model, preprocess, tokenizer, Image.open(image), LABELS)
    got = dict(zip(row["labels"], row["scores"]))
    torch.testing.assert_close(torch.tensor([got[label] for label in LABELS]), want, atol=1e-5, rtol=0)
    assert abs(sum(row["scores"]) - 1.0) > 1e-2  # not a softmax
    assert main(["classify", str(image), "--labels", *LABELS, "--templates", "{}", "--no-progress",
                 "--model", str(SIGLIP)]) == 0
    table = capsys.readouterr().out
    assert f"{max(want).item():7.2%}" in table


def test_server_classify_route_gives_sigmoid_probabilities(tmp_path, data_dir):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from kontrast.search.build import update_index
    from kontrast.search.query import Searcher
    from kontrast.search.server import create_app

    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((data_dir / "emoji_sample").glob("*.png"))[:6]:
        shutil.copyfile(path, images / path.name)
    model, preprocess, tokenizer = kontrast.load(SIGLIP)
    update_index(tmp_path / "idx", [str(images)], model, preprocess, tokenizer, str(SIGLIP), workers=0)
    searcher = Searcher.open(str(tmp_path / "idx"))
    query = IMAGES / "rgb_97x311.png"
    with TestClient(create_app(searcher), base_url="http://127.0.0.1") as client:
        res = client.post("/classify", files={"file": ("q.png", query.read_bytes(), "image/png")},
                          data={"labels": LABELS, "template": "{}"})
    assert res.status_code == 200, res.text
    got = {d["label"]: d for d in res.json()["labels"]}
    want = _sigmoid_reference(model, preprocess, tokenizer, Image.open(query), LABELS)
    for label, p in zip(LABELS, want.tolist()):
        assert got[label]["prob"] == pytest.approx(p, abs=1e-5)
        assert got[label]["prob"] == pytest.approx(float(torch.sigmoid(
            model.logit_scale.detach().exp() * got[label]["score"] + model.logit_bias.detach())), abs=1e-5)
    assert abs(sum(d["prob"] for d in got.values()) - 1.0) > 1e-2


def test_demo_report_with_a_siglip_model(tmp_path):
    from kontrast.demo import run_demo

    report, path = run_demo(str(SIGLIP), tmp_path / "demo")
    info = json.loads((tmp_path / "demo" / "report.json").read_text())["model_info"]
    assert info["probabilities"].startswith("sigmoid") and info["logit_bias"] == pytest.approx(-3.25)
    assert "SigLIP ViT" in info["vision"] and "last-token pooling" in info["text"]
    assert "sigmoid(scale * cos + bias) per label" in path.read_text()
    first = report.classifications[0]
    sums = [sum(p for _, p in c.top) for c in report.classifications]
    assert max(sums) < 0.5  # three labels of a sigmoid model with bias -3.25, not a softmax's near-1 mass
    assert first.top[0][1] >= first.top[-1][1]


def test_onnx_back_end_for_siglip(tmp_path):
    pytest.importorskip("onnxruntime")
    source = tmp_path / "siglip"
    shutil.copytree(FAMILIES / "siglip2_open_clip", source)
    model, preprocess, tokenizer = kontrast.load(source)
    assert main(["export", str(source), "--onnx", str(tmp_path / "onnx")]) == 0
    shutil.rmtree(source)  # the export carries the checkpoint's own tokenizer files
    onnx, onnx_preprocess, onnx_tokenizer = kontrast.load(tmp_path / "onnx", backend="onnx")
    assert onnx.sigmoid and float(onnx.logit_bias) == float(model.logit_bias.detach())
    assert type(onnx.config).__name__ == "SigLIPConfig" and kontrast.fingerprint(onnx) == kontrast.fingerprint(model)
    texts = ["a cat", "a photo of a dog", "ünïcode 1999"]
    ids = tokenizer(texts)
    assert torch.equal(onnx_tokenizer(texts), ids)
    image = Image.open(IMAGES / "rgba_161x160.png")
    assert torch.equal(onnx_preprocess(image), preprocess(image))
    x = torch.randn(3, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(onnx.encode_image(x), model.encode_image(x), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(onnx.encode_text(ids), model.encode_text(ids), atol=1e-4, rtol=1e-4)
    clf = [zeroshot.ZeroShotClassifier(m, p, t, LABELS, templates=["{}"]) for m, p, t in
           ((model, preprocess, tokenizer), (onnx, onnx_preprocess, onnx_tokenizer))]
    torch.testing.assert_close(clf[1]([image]), clf[0]([image]), atol=1e-5, rtol=0)
    int8 = kontrast.load(tmp_path / "onnx", backend="onnx", precision="int8")[0]
    with torch.no_grad():
        assert F.cosine_similarity(int8.encode_image(x), model.encode_image(x)).min() > 0.999


def _train_cfg(tmp_path: Path, data_dir: Path, model: str, **kw):
    from kontrast.train.config import TrainConfig

    base = {"model": model, "train_data": str(data_dir / "emoji_sample" / "captions.csv"), "batch_size": 8, "steps": 2,
            "lr": 1e-3, "warmup": 1, "precision": "fp32", "output": str(tmp_path / "run"), "log_every": 1,
            "tensorboard": False, "threads": 1, "save_every": 1}
    return TrainConfig.from_dict(base | kw)


@pytest.mark.parametrize("name", ["siglip_open_clip", "siglip_hf"])
def test_fine_tuning_siglip_uses_the_siglip_loss(tmp_path, data_dir, name):
    from kontrast.models.siglip import SigLIP
    from kontrast.train.loop import Trainer
    from kontrast.train.losses import SigLipLoss

    torch.set_num_threads(1)
    cfg = _train_cfg(tmp_path, data_dir, str(FAMILIES / name), save_model=str(tmp_path / "final"))
    assert cfg.loss is None  # the recipe does not say
    trainer = Trainer(cfg)
    assert trainer.cfg.loss == "siglip" and isinstance(trainer.loss_fn, SigLipLoss)
    bias = float(trainer.model.logit_bias.detach())
    trainer.run()
    assert float(trainer.model.logit_bias.detach()) != bias  # the bias is trained
    again = kontrast.load(tmp_path / "final")[0]  # written in the layout it was read from
    assert isinstance(again, SigLIP)
    assert all(torch.equal(again.state_dict()[k], v) for k, v in trainer.model.state_dict().items())
    resumed = Trainer(_train_cfg(tmp_path, data_dir, str(FAMILIES / name), steps=3), resume="latest")
    assert isinstance(resumed.model, SigLIP) and resumed.step == 2 and resumed.cfg.loss == "siglip"
    assert torch.equal(resumed.model.logit_bias, trainer.model.logit_bias)


def test_clip_keeps_the_clip_loss_by_default(tmp_path, data_dir):
    from kontrast.train.loop import Trainer
    from kontrast.train.losses import ClipLoss

    trainer = Trainer(_train_cfg(tmp_path, data_dir, "tiny-ViT", steps=1))
    assert trainer.cfg.loss == "clip" and isinstance(trainer.loss_fn, ClipLoss) and trainer.model.logit_bias is None
