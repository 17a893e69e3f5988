"""The default model's training-data rules: the emoji concept split, name -> code point mapping, skin-tone cap,
held-out names, and the shipped record of what the default model was trained on.

These fail if a held-out concept (in any style), OpenMoji, or a clip-art ``val`` name could enter training.
"""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO / "scripts"))

import training_data_rules as rules

MANIFEST = REPO / "src/kontrast/assets/default_model/training_data.json"

# A hand-made emojibase excerpt: a train concept, a held-out concept (1F647-200D-2642 "man bowing" and
# 1F3F8 "badminton" are "test" under the rule), a flag, a keycap and a skin-toned emoji.
ENTRIES = [
    {"label": "droplet", "hexcode": "1F4A7", "tags": ["drop", "sweat"], "group": 3},
    {"label": "man bowing", "hexcode": "1F647-200D-2642-FE0F", "tags": ["apology", "bow"], "group": 1},
    {"label": "flag: Japan", "hexcode": "1F1EF-1F1F5", "tags": ["flag"], "group": 9},
    {"label": "keycap: #", "hexcode": "0023-FE0F-20E3", "tags": ["keycap"], "group": 8},
    {"label": "waving hand", "hexcode": "1F44B", "tags": ["hello"], "group": 1,
     "skins": [{"label": f"waving hand: {t} skin tone", "hexcode": f"1F44B-{h}"}
               for t, h in zip(("light", "medium-light", "medium", "medium-dark", "dark"), rules.SKIN_TONES)]},
    {"label": "light skin tone", "hexcode": "1F3FB", "group": 2},
]


def test_concept_strips_fe0f_and_skin_tones():
    assert rules.concept_of("1f44b-1f3fd") == "1F44B"
    assert rules.concept_of("2764-FE0F") == "2764"
    assert rules.concept_of("0023-fe0f-20e3") == "0023-20E3"
    assert rules.concept_of("1F468-1F3FB-200D-1F9B0") == "1F468-200D-1F9B0"


def test_split_matches_the_shared_data_on_every_emoji():
    """The rule reproduces ``concept`` and ``concept_split`` of every emoji json in ../shared/data."""
    shards = sorted((SHARED / "emoji").glob("emoji-*.tar"))
    assert shards, "../shared/data/emoji is missing"
    seen = {"train": 0, "test": 0}
    for shard in shards:
        with tarfile.open(shard) as tar:
            for m in tar:
                if m.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(m).read())
                    assert rules.concept_of(meta["codepoint"]) == meta["concept"], meta["codepoint"]
                    assert rules.concept_split(meta["concept"]) == meta["concept_split"], meta["concept"]
                    seen[meta["concept_split"]] += 1
    assert seen["train"] > 1000 and seen["test"] > 300


def test_names_map_to_code_points_and_ambiguous_names_to_nothing():
    index = rules.EmojiIndex(ENTRIES, [{"1F4A7": ["droplet", "drop"], "1F44B": "wave"}], {"1F4A7": "DROPLET"})
    assert index.hex_for_name("droplet") == "1F4A7"
    assert index.hex_for_name("flag-for-japan") == "1F1EF-1F1F5"
    assert rules.concept_of(index.hex_for_name("waving-hand-medium-dark-skin-tone")) == "1F44B"
    assert rules.skin_tones(index.hex_for_name("waving-hand-dark")) == (5,)
    assert index.hex_for_name("wavinghand") is None and index.hex_for_name("wavinghand", compact_ok=True) == "1F44B"
    assert index.hex_for_name("light-skin-tone") is None  # components are not emoji
    assert index.hex_for_name("no-such-emoji") is None
    clash = rules.EmojiIndex(ENTRIES + [{"label": "droplet", "hexcode": "1F4A6", "group": 3}])
    assert clash.hex_for_name("droplet") is None  # two concepts claim the name: left out
    # a set's own chars map wins over names
    assert rules.map_icon("drop-thing", {"drop-thing": "1f4a7"}, index) == "1F4A7"
    assert rules.map_icon("drop-thing-light", {"drop-thing": "1f4a7"}, index) == "1F4A7-1F3FB"


def test_held_out_names_cover_labels_and_shortcodes():
    index = rules.EmojiIndex(ENTRIES, [{"1F647-200D-2642": ["man_bowing", "bowing_man"]}])
    assert rules.concept_split("1F647-200D-2642") == "test" and rules.concept_split("1F4A7") == "train"
    held = index.held_out_names()
    assert {"man bowing", "bowing man"} <= held
    assert "droplet" not in held


def test_skin_tone_cap_keeps_one_tone_per_style_and_concept():
    for style in ("noto", "twemoji", "fluent-emoji-3d"):
        kept = [h for h in rules.SKIN_TONES if rules.keep_skin_variant(style, "1F44B", f"1F44B-{h}")]
        assert len(kept) == 1
    assert rules.keep_skin_variant("noto", "1F44B", "1F44B")  # the base emoji is always kept


def test_flip_rules():
    assert rules.may_flip("rooster", 3) and rules.may_flip("boot kick")
    assert not rules.may_flip("flag of Japan", 9) and not rules.may_flip("keycap 1", 8)
    assert not rules.may_flip("arrow reload horizontal") and not rules.may_flip("alarm clock")
    assert not rules.may_flip("letter a") and not rules.may_flip("v")


def test_captions():
    caps = rules.emoji_captions("flag: Japan", ["flag", "JP"])
    assert caps[0] == "an emoji of a flag of Japan" and "an emoji of flag: Japan" in caps
    assert rules.icon_captions("apple")[0] == "an icon of an apple"
    assert rules.clean_icon_name("arrow-reload-horizontal-1-flat") == "arrow reload horizontal"
    assert rules.clean_icon_name("search-alt-2") == "search"


def test_builder_drops_held_out_concepts_openmoji_names_and_clipart_val_names():
    import build_training_data as build
    index = rules.EmojiIndex(ENTRIES)
    b = build.Builder(index, index.held_out_names() | {"hairy creature"}, {"red lip"})
    job = ("raster", b"", 64)
    b.add_emoji("noto", "1F647-200D-2642-FE0F", job, "Apache-2.0", "test")  # held out: dropped
    b.add_emoji("noto", "1F4A7", job, "Apache-2.0", "test")
    b.add_emoji("noto", "1F9FF", job, "Apache-2.0", "test")  # not in the index: dropped
    b.add_named("game-icons", "man bowing", ["x"], True, job, "CC-BY-3.0", "test", "icon")
    b.add_named("game-icons", "hairy creatures", ["x"], True, job, "CC-BY-3.0", "test", "icon")
    b.add_named("icon-park", "red lips", ["x"], True, job, "Apache-2.0", "test", "icon")
    b.add_named("icon-park", "anvil", ["x"], True, job, "Apache-2.0", "test", "icon")
    assert [m["name"] for m, _ in b.items] == ["droplet", "anvil"]
    assert b.dropped["noto: held-out concept"] == 1 and b.dropped["noto: no emojibase entry"] == 1
    assert b.dropped["game-icons: held-out emoji name"] == 2 and b.dropped["icon-park: clip-art val name"] == 1


def test_shipped_record_has_no_held_out_concept_no_openmoji_no_clipart_val_name():
    manifest = json.loads(MANIFEST.read_text(encoding="utf-8"))
    assert manifest["concepts"], "the record lists the emoji concepts trained on"
    bad = [c for c in manifest["concepts"] if rules.concept_split(c) != "train"]
    assert not bad, f"held-out concepts in the training record: {bad[:5]}"
    assert not any("openmoji" in s.lower() for s in manifest["styles"])
    assert not any("openmoji" in s.lower() for s in manifest["licenses"])
    with tarfile.open(SHARED / "clipart/clipart-val-000000.tar") as tar:
        val = {rules.norm_name(json.loads(tar.extractfile(m).read())["name"]) for m in tar if m.name.endswith(".json")}
    assert not val & set(manifest["names"])
    assert len(manifest["styles"]) >= 20
    licences = MANIFEST.parent / "LICENSES"
    for style, lic in manifest["licenses"].items():
        assert lic and lic.get("spdx"), f"no licence recorded for {style}"
    assert any(licences.iterdir())


def test_flag_codes_map_to_emoji_flags_only():
    assert rules.flag_hexcode("JP") == "1F1EF-1F1F5"  # regional indicators J, P
    assert rules.flag_hexcode("gb-sct") == "1F3F4-E0067-E0062-E0073-E0063-E0074-E007F"  # Scotland's tag sequence
    assert rules.flag_hexcode("us-tx") is None and rules.flag_hexcode("eu1") is None and rules.flag_hexcode("lgbt") is None


FLAG_ENTRIES = ENTRIES + [{"label": "flag: Israel", "hexcode": "1F1EE-1F1F1", "tags": ["flag"], "group": 9}]


def fake_flag_sets(modules: Path, names: tuple[str, ...]) -> None:
    """iconify JSON files under ``modules`` for the flag sets ``names``: Japan (two drawings), Israel (a held-out
    concept), Texas (no emoji) and Kosovo (two letters, but no emoji), each a red 4:3 rectangle."""
    folder = modules / "@iconify/json/json"
    folder.mkdir(parents=True, exist_ok=True)
    body = '<rect width="4" height="3" fill="#c00"/>'
    icons = {name: {"body": body} for name in ("jp-4x3", "jp-1x1", "il-4x3", "us-tx-4x3", "xk-4x3")}
    for name in names:
        (folder / f"{name}.json").write_text(json.dumps({"info": {"license": {"spdx": "MIT", "title": "MIT"}},
                                                         "icons": icons, "width": 4, "height": 3}))


def test_flag_sets_go_through_the_concept_split(tmp_path):
    import build_training_data as build
    assert rules.concept_split("1F1EE-1F1F1") == "test"  # held out in every style, flags too
    index = rules.EmojiIndex(FLAG_ENTRIES)
    fake_flag_sets(tmp_path, ("flag",))
    b = build.Builder(index, index.held_out_names(), set(), tmp_path, 32)
    b.flag_set("flag")
    assert [(m["name"], m["style"], m["concept"]) for m, _ in b.items] == [("flag: Japan", "flag", "1F1EF-1F1F5")] * 2
    assert b.items[0][0]["captions"][0] == "an emoji of a flag of Japan"
    assert b.dropped == {"flag: held-out concept": 1, "flag: not an emoji flag": 1, "flag: no emojibase entry": 1}
    png = build.render(b.items[0][1])  # a 4:3 viewBox padded to a square, rendered on white
    from io import BytesIO

    from PIL import Image

    im = Image.open(BytesIO(png))
    assert im.size == (32, 32) and im.getpixel((16, 16)) == (204, 0, 0) and im.getpixel((16, 1)) == (255, 255, 255)


def test_flags_are_added_beside_an_earlier_build_in_their_own_shard(tmp_path):
    import build_training_data as build
    index = rules.EmojiIndex(FLAG_ENTRIES)
    fake_flag_sets(tmp_path, build.FLAG_SETS)
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "train-000000.tar").write_bytes(b"earlier build")
    manifest = {"samples": 1, "styles": {"noto": 1}, "licenses": {"noto": {"spdx": "Apache-2.0"}},
                "concepts": ["1F4A7"], "shards": [{"shard": "train-000000.tar"}]}
    build.add_flags(shards / "manifest.json", manifest, build.Builder(index, index.held_out_names(), set(), tmp_path, 32), 1)
    assert (shards / "train-000000.tar").read_bytes() == b"earlier build"  # the training shards are left as they were
    on_disk = json.loads((shards / "manifest.json").read_text(encoding="utf-8"))
    assert on_disk == manifest and manifest["samples"] == 1
    flags = manifest["flags"]
    assert flags["sets"] == list(build.FLAG_SETS) and flags["samples"] == 2 * len(build.FLAG_SETS)  # Japan, twice a set
    assert [s["shard"] for s in flags["shards"]] == ["flags-000000.tar"]
    with tarfile.open(shards / "flags-000000.tar") as tar:
        metas = [json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")]
    assert {m["concept"] for m in metas} == {"1F1EF-1F1F5"} and len(metas) == flags["samples"]
    assert set(manifest["styles"]) == {"noto", *build.FLAG_SETS} and manifest["styles"]["flag"] == 2
    assert set(manifest["licenses"]) == {"noto", *build.FLAG_SETS}
    assert manifest["concepts"] == ["1F1EF-1F1F5", "1F4A7"]
    assert flags["dropped"]["flag: held-out concept"] == 1


def bundled_font() -> Path:
    """DejaVu Sans as matplotlib ships it (a real font file with the geometric shapes and chess pieces)."""
    import matplotlib

    return Path(matplotlib.__file__).parent / "mpl-data/fonts/ttf/DejaVuSans.ttf"


def test_symbol_names_and_captions():
    assert rules.symbol_name("\u265d") == "black chess bishop"
    assert rules.symbol_name("\U0001f1e6") == "regional indicator A"  # as OpenMoji and emoji sets name it
    assert rules.symbol_name("\ue000") is None  # private use: no name, never a symbol
    assert rules.symbol_captions("black hexagon")[0] == "an emoji of a black hexagon"
    assert "the youtube logo" in rules.logo_captions("youtube")


def test_font_symbols_go_through_the_concept_split_and_the_emoji_rules(tmp_path):
    import build_training_data as build
    font = bundled_font()
    chars = build.font_chars(font)
    assert "\u265d" in chars and "\u25cf" in chars and all(rules.symbol_name(c) for c in chars)
    # the sun (2600) is an emoji: it takes its emojibase label; other symbols are concepts of their code point
    index = rules.EmojiIndex(ENTRIES + [{"label": "sun", "hexcode": "2600-FE0F", "tags": ["sunny"], "group": 3}])
    b = build.Builder(index, index.held_out_names() | {"black hexagon"}, {"lightning"}, tmp_path, 32)
    b.symbols({"dejavu": font})
    metas = {m["codepoint"]: m for m, _ in b.items}
    held = [c for c in chars if rules.concept_split(f"{ord(c):04X}") == "test"]
    assert held and not {f"{ord(c):04X}" for c in held} & set(metas)  # held-out code points never enter
    assert metas["2600"]["kind"] == "emoji" and metas["2600"]["name"] == "sun"
    bishop = metas["265D"]
    assert (bishop["kind"], bishop["name"], bishop["concept"], bishop["flip"]) == ("symbol", "black chess bishop", "265D", False)
    assert "2B22" not in metas and b.dropped["dejavu: held-out emoji name"] >= 1  # black hexagon: a held-out name
    assert rules.concept_split("2607") == "train" and "\u2607" in chars  # a train code point, but ...
    assert "2607" not in metas and b.dropped["dejavu: clip-art val name"] == 1  # ... named like a clip-art val name
    assert b.dropped["dejavu: held-out concept"] == len(held) - ("2600" in {f"{ord(c):04X}" for c in held})
    from io import BytesIO

    from PIL import Image

    im = Image.open(BytesIO(build.render(b.items[[m["codepoint"] for m, _ in b.items].index("25CF")][1])))
    assert im.size == (32, 32) and im.getpixel((16, 16)) == (0, 0, 0) and im.getpixel((1, 1)) == (255, 255, 255)  # black circle
    assert build.render(("glyph", (str(font), " "), 32)) is None  # no ink: a render failure, counted


def test_extras_are_added_beside_an_earlier_build_in_their_own_shard(tmp_path):
    import build_training_data as build
    index = rules.EmojiIndex(ENTRIES)
    folder = tmp_path / "@iconify/json/json"
    folder.mkdir(parents=True)
    icons = {"google-chrome": {"body": '<circle cx="8" cy="8" r="7" fill="#1a73e8"/>'},
             "man-bowing-icon": {"body": '<rect width="16" height="16"/>'}}  # named like a held-out emoji
    (folder / "logos.json").write_text(json.dumps({"info": {"license": {"spdx": "CC0-1.0", "title": "CC0"}},
                                                   "icons": icons, "width": 16, "height": 16}))
    shards = tmp_path / "shards"
    shards.mkdir()
    manifest = {"samples": 1, "styles": {"noto": 1}, "licenses": {"noto": {"spdx": "Apache-2.0"}},
                "concepts": ["1F4A7"], "names": ["anvil"], "shards": [{"shard": "train-000000.tar"}]}
    fonts = {"dejavu": bundled_font()}
    build.add_extras(shards / "manifest.json", manifest, build.Builder(index, index.held_out_names(), set(), tmp_path, 32),
                     1, fonts)
    extras = manifest["extras"]
    assert extras["sets"] == ["font:dejavu", "logos"] and extras["styles"]["logos"] == 1
    assert extras["dropped"]["logos: held-out emoji name"] == 1
    assert "google chrome" in manifest["names"] and "anvil" in manifest["names"]
    assert not [c for c in manifest["concepts"] if rules.concept_split(c) != "train"]
    with tarfile.open(shards / "extras-000000.tar") as tar:
        metas = [json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")]
    assert len(metas) == extras["samples"] == extras["styles"]["dejavu"] + 1
    chrome = next(m for m in metas if m["style"] == "logos")
    assert chrome["captions"][:2] == ["an emoji of google chrome", "google chrome"] and chrome["kind"] == "logo"
    assert json.loads((shards / "manifest.json").read_text(encoding="utf-8")) == manifest
    assert build.built(shards, extras, build.extras_sources(fonts)) and not build.built(shards, extras, ["logos"])
