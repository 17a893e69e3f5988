"""A clip-retrieval embedding folder (img_emb / text_emb / metadata parquet) imported with ``kontrast index
--from-embeddings`` and served back through ``/knn-service`` and ``/metadata``: the rows' ``url`` and other
columns come back, ``image_path`` only where the metadata had one, and no ``image`` (the files were never read)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow as pa  # kontrast[all]
import pyarrow.parquet as pq
import torch
from fastapi.testclient import TestClient

import kontrast
from kontrast.preprocess import load_image
from kontrast.record import fingerprint
from kontrast.search.import_embeddings import import_embeddings
from kontrast.search.query import Searcher
from kontrast.search.server import create_app


def test_imported_rows_served_with_their_urls(tmp_path, data_dir):
    sample = data_dir / "emoji_sample"
    with open(sample / "captions.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:6]
    model, preprocess, tokenizer = kontrast.load("default")
    pixels = torch.stack([preprocess(load_image(str(sample / r["filepath"]))) for r in rows])  # [6, 3, H, W]
    with torch.inference_mode():
        img = model.encode_image(pixels, normalize=True).numpy()  # [6, D]
        txt = model.encode_text(tokenizer([r["caption"] for r in rows]), normalize=True).numpy()  # [6, D]
    emb = tmp_path / "emb"
    for sub in ("img_emb", "text_emb", "metadata"):
        (emb / sub).mkdir(parents=True)
    np.save(emb / "img_emb" / "img_emb_0.npy", img.astype(np.float16))
    np.save(emb / "text_emb" / "text_emb_0.npy", txt.astype(np.float16))
    paths = [str(sample / r["filepath"]) if i % 2 == 0 else None for i, r in enumerate(rows)]
    table = pa.table({"image_path": paths, "caption": [r["caption"] for r in rows],
                      "url": [f"https://img.example/{i}.png" for i in range(6)], "NSFW": ["UNLIKELY"] * 6})
    pq.write_table(table, emb / "metadata" / "metadata_0.parquet")
    import_embeddings(emb, tmp_path / "idx", "default", fingerprint(model), img.shape[1])

    with TestClient(create_app({"laion-like": Searcher.open(str(tmp_path / "idx"))}), base_url="http://127.0.0.1") as c:
        out = c.post("/knn-service", content=json.dumps({"text": rows[3]["caption"], "num_images": 6,
                                                         "indice_name": "laion-like", "modality": "text"})).json()
        assert len(out) == 6 and out[0]["caption"] == rows[3]["caption"]
        by_url = {r["url"]: r for r in out}
        assert set(by_url) == {f"https://img.example/{i}.png" for i in range(6)}
        for i in range(6):
            r = by_url[f"https://img.example/{i}.png"]
            assert r["NSFW"] == "UNLIKELY" and "image" not in r
            assert r.get("image_path") == paths[i]  # none for rows imported without one
        first = out[0]
        meta = c.post("/metadata", content=json.dumps({"indice_name": "laion-like", "ids": [first["id"]]})).json()
        assert meta[0]["metadata"]["url"] == first["url"] and "image" not in meta[0]["metadata"]
