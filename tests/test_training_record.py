"""The record a default model ships (``training_data.json``): the manifest restricted to the shards its recipe
trained on, so that a model trained without a part of the build does not claim its styles, concepts or names."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import training_record as tr


def write_shard(path: Path, metas: list[dict]) -> dict:
    with tarfile.open(path, "w") as tar:
        for i, meta in enumerate(metas):
            for ext, data in (("json", json.dumps(meta).encode()), ("png", b"\x89PNG")):
                info = tarfile.TarInfo(f"{i:07d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return {"shard": path.name, "samples": len(metas)}


def build(folder: Path) -> dict:
    """A manifest as the data build leaves it: training shards plus the flags and extras parts, fields unioned."""
    train = [{"kind": "emoji", "style": "noto", "name": "droplet", "concept": "1F4A7"},
             {"kind": "icon", "style": "icon-park", "name": "Shopping Carts"}]
    flags = [{"kind": "emoji", "style": "flag", "name": "flag: Japan", "concept": "1F1EF-1F1F5"}]
    extras = [{"kind": "symbol", "style": "symbola", "name": "black chess bishop", "concept": "265D"},
              {"kind": "icon", "style": "logos", "name": "the python logo"},
              {"kind": "emoji", "style": "symbola", "name": "droplet", "concept": "1F4A7"}]
    licenses = {"noto": "Apache-2.0", "icon-park": "Apache-2.0", "flag": "MIT", "symbola": "free", "logos": "CC0",
                "emojibase-data": "MIT"}
    manifest = {"version": 1, "samples": 2, "styles": {"flag": 1, "icon-park": 1, "logos": 1, "noto": 1, "symbola": 2},
                "licenses": licenses, "concepts": ["1F1EF-1F1F5", "1F4A7", "265D"],
                "names": ["python logo", "shopping cart"],
                "shards": [write_shard(folder / "train-000000.tar", train)]}
    for key, metas in (("flags", flags), ("extras", extras)):
        manifest[key] = {"samples": len(metas), "shards": [write_shard(folder / f"{key}-000000.tar", metas)]}
    return manifest


def test_parts_used_come_from_the_recipe_patterns():
    assert tr.parts_used(["~/c/shards/train-{000000..000007}.tar", "~/c/shards/flags-000000.tar",
                          "../shared/data/clipart/clipart-train-000000.tar"]) == ["flags"]
    assert tr.parts_used(["a/extras-000000.tar", "a/flags-000000.tar"]) == ["flags", "extras"]
    assert tr.parts_used(["a/train-000000.tar"]) == []


def test_record_leaves_out_what_the_recipe_did_not_train_on(tmp_path):
    manifest = build(tmp_path)
    rec = tr.record_for(manifest, tmp_path, ["flags"])
    assert "flags" in rec and "extras" not in rec
    assert rec["styles"] == {"flag": 1, "icon-park": 1, "noto": 1}
    assert rec["concepts"] == ["1F1EF-1F1F5", "1F4A7"]  # not the chess bishop of the extras
    assert rec["names"] == ["shopping cart"]  # not the logo; emoji are named by concept
    assert set(rec["licenses"]) == {"flag", "icon-park", "noto", "emojibase-data"}  # a style-less licence stays
    assert rec["version"] == 1 and rec["samples"] == 2

    full = tr.record_for(manifest, tmp_path, ["flags", "extras"])
    assert full["concepts"] == manifest["concepts"] and full["names"] == manifest["names"]
    assert full["styles"] == manifest["styles"] and set(full["licenses"]) == set(manifest["licenses"])


def test_a_part_never_built_is_an_error(tmp_path):
    manifest = build(tmp_path)
    del manifest["extras"]
    with pytest.raises(ValueError, match="no part 'extras'"):
        tr.record_for(manifest, tmp_path, ["extras"])


def test_a_missing_shard_is_named(tmp_path):
    manifest = build(tmp_path)
    (tmp_path / "flags-000000.tar").unlink()
    with pytest.raises(ValueError, match="flags-000000.tar: shard listed in the manifest is missing"):
        tr.record_for(manifest, tmp_path, ["flags"])


def test_command_line_names_a_missing_build_or_recipe(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train_data: a/train-000000.tar\n")
    with pytest.raises(SystemExit):
        tr.main([str(recipe), "--cache", str(tmp_path)])
    assert "manifest.json not found" in capsys.readouterr().err
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "manifest.json").write_text(json.dumps(build(tmp_path / "shards")))
    with pytest.raises(SystemExit):
        tr.main([str(tmp_path / "nope.yaml"), "--cache", str(tmp_path)])
    assert "nope.yaml: not a recipe with train_data" in capsys.readouterr().err


def test_command_line_writes_the_record_of_a_recipe(tmp_path):
    (tmp_path / "shards").mkdir()
    manifest = build(tmp_path / "shards")
    (tmp_path / "shards" / "manifest.json").write_text(json.dumps(manifest))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train_data:\n  - ~/x/shards/train-{000000..000007}.tar\n  - ~/x/shards/extras-000000.tar\n")
    out = tmp_path / "training_data.json"
    assert tr.main([str(recipe), "--cache", str(tmp_path), "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert "extras" in rec and "flags" not in rec and "flag" not in rec["styles"]
    assert rec["concepts"] == ["1F4A7", "265D"]
