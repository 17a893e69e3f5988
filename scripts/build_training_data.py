"""Build the default model's training set: ~50,000 image-caption pairs in 20+ art styles, as webdataset shards.

    pip install resvg-py==0.5.0      # the SVG renderer (only this script needs it)
    python scripts/build_training_data.py [--cache ~/.cache/kontrast-data] [--size 96] [--workers 2]

Deterministic: pinned package versions, sorted inputs, fixed shuffle seed, fixed tar metadata. Sources
(installed into ``CACHE`` on first use, never into the repository):
- npm ``@iconify/json`` (emoji sets, colourful icon sets, game-icons, country-flag sets), ``@lobehub/fluent-emoji-3d``
  (3D renders),
  ``emojibase-data`` (labels, tags, shortcodes) with ``npm install --prefix CACHE/npm``;
- Debian ``tuxpaint-stamps-default``, ``fonts-symbola`` and ``fonts-dejavu-core`` (``apt-get download`` +
  ``dpkg-deb -x`` into ``CACHE/deb``);
- the training splits of ``../shared/data`` (emoji google/twitter ``train``, clip-art ``train``).
SVGs are rendered with resvg-py (non-square viewBoxes padded to a square) onto white, rasters composited
onto white and padded to a square; every image is stored as a ``SIZE`` px RGB PNG.

The rules (``scripts/training_data_rules.py``): every emoji, in every style, is mapped to code points (the
set's ``chars`` map, else emojibase names; unmapped emoji are left out) and goes through the concept split
of ``../shared/data/README.md``; held-out concepts never enter, in any style, and neither do icons or stamps
named like a held-out emoji or like a clip-art ``val`` name. OpenMoji is never read for images (only the
names of its held-out concepts, to keep icons of them out). Skin-tone variants are capped to one tone per
concept and style. Output: ``CACHE/shards/train-{000000..}.tar``; ``flags-{000000..}.tar``, the country flags of
four flag sets (``FLAG_SETS``, emoji flags only, same rules; kept apart so that the training shards, and the
recipes that name them, stay as they were; a cache built before them gets them added on the next run);
``extras-{000000..}.tar``, the same way: Unicode symbols (``SYMBOL_BLOCKS``: geometric shapes, arrows, chess,
enclosed letters, regional indicators, ...) drawn black on white from two fonts and captioned by their character
names (an emoji among them takes its emojibase label; any other symbol is the concept of its code point, the rule
OpenMoji's extras follow, under the same split), and brand logos (``LOGO_SETS``, through the name rules);
``manifest.json`` (counts, styles, licences, dropped counts, the concepts and names trained on) and ``LICENSES/``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tarfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import training_data_rules as rules

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
NPM_PACKAGES = {"@iconify/json": "2.2.535", "@lobehub/fluent-emoji-3d": "1.1.0", "emojibase-data": "17.0.0"}
DEB_PACKAGE = ("tuxpaint-stamps-default", "2022.06.04-1")
EMOJI_SETS = ("noto", "noto-v1", "twemoji", "fluent-emoji", "fluent-emoji-flat", "fluent-emoji-high-contrast",
              "emojione", "emojione-v1", "emojione-monotone", "fxemoji", "streamline-emojis")
# Emoji sets without a ``chars`` map whose names follow another set's (same designer, same names).
BORROW_CHARS = {"fluent-emoji": "fluent-emoji-flat", "fluent-emoji-high-contrast": "fluent-emoji-flat", "noto-v1": "noto"}
ICON_SETS = ("icon-park", "flat-color-icons", "glyphs-poly", "marketeq", "game-icons", "streamline-color",
             "streamline-ultimate-color", "streamline-plump-color", "streamline-freehand-color",
             "streamline-kameleon-color", "streamline-stickies-color", "streamline-flex-color",
             "streamline-sharp-color", "streamline-cyber-color")
FLAG_SETS = ("flag", "circle-flags", "flagpack", "cif")  # country flags by ISO code: shards flags-*.tar
# Unicode symbols drawn from two fonts (Debian packages) and brand logos: shards extras-*.tar
FONT_DEBS = {"fonts-symbola": ("2.60-1.1", "usr/share/fonts/truetype/ancient-scripts/Symbola_hint.ttf", "symbola"),
             "fonts-dejavu-core": ("2.37-6", "usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "dejavu")}
SYMBOL_BLOCKS = ((0x2100, 0x214F), (0x2190, 0x21FF), (0x2300, 0x23FF), (0x2460, 0x24FF), (0x25A0, 0x25FF),
                 (0x2600, 0x26FF), (0x2700, 0x27BF), (0x2B00, 0x2BFF), (0x1F100, 0x1F1FF), (0x1F200, 0x1F2FF),
                 (0x1F780, 0x1F7FF), (0x1FB00, 0x1FBFF))  # letterlike .. legacy computing
LOGO_SETS = ("logos",)  # colour brand and product logos (CC0)
FONT_LICENSES = {
    "symbola": {"name": "Free for any use (Symbola, George Douros)", "spdx": "LicenseRef-Symbola-free",
                "author": "George Douros", "package": "fonts-symbola", "url": "https://packages.debian.org/fonts-symbola"},
    "dejavu": {"name": "Bitstream Vera / DejaVu fonts licence", "spdx": "Bitstream-Vera", "author": "DejaVu fonts team",
               "package": "fonts-dejavu-core", "url": "https://dejavu-fonts.github.io/License.html"}}
NEVER = ("openmoji",)  # the unseen-style validation set
SHARD_SIZE = 5000
SEED = 20261129


# ------------------------------------------------------------------------------------------ installing
def install(cache: Path) -> tuple[Path, Path]:
    """Install the pinned npm and Debian packages into ``cache`` (once); returns (node_modules, stamps dir)."""
    npm = cache / "npm"
    modules = npm / "node_modules"
    if not all((modules / name / "package.json").is_file() for name in NPM_PACKAGES):
        npm.mkdir(parents=True, exist_ok=True)
        specs = [f"{name}@{version}" for name, version in NPM_PACKAGES.items()]
        subprocess.run(["npm", "install", "--prefix", str(npm), "--no-audit", "--no-fund", *specs], check=True)
    for name, version in NPM_PACKAGES.items():
        found = json.loads((modules / name / "package.json").read_text())["version"]
        if found != version:
            raise SystemExit(f"{modules / name}: version {found}, expected {version}; delete {npm} and rerun")
    deb = cache / "deb"
    stamps = deb / "root/usr/share/tuxpaint/stamps"
    if not stamps.is_dir():
        fetch_deb(deb, *DEB_PACKAGE)
    return modules, stamps


def fetch_deb(deb: Path, name: str, version: str) -> None:
    """``apt-get download`` the Debian package ``name=version`` into ``deb`` and unpack it into ``deb/root``."""
    deb.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", f"{name}={version}"], cwd=deb, check=True)
    subprocess.run(["dpkg-deb", "-x", str(max(deb.glob(f"{name}_{version}_*.deb"))), str(deb / "root")], check=True)


def install_fonts(cache: Path) -> dict[str, Path]:
    """Download and unpack the pinned font packages (:data:`FONT_DEBS`) into ``CACHE/deb``; style -> font file."""
    deb = cache / "deb"
    fonts = {}
    for name, (version, member, style) in FONT_DEBS.items():
        path = deb / "root" / member
        if not path.is_file():
            fetch_deb(deb, name, version)
        fonts[style] = path
    return fonts


def font_chars(font: Path) -> list[str]:
    """The named characters of :data:`SYMBOL_BLOCKS` that ``font`` draws (its cmap), in code point order."""
    from fontTools.ttLib import TTFont

    cmap = TTFont(str(font), lazy=True).getBestCmap()
    return [chr(c) for lo, hi in SYMBOL_BLOCKS for c in range(lo, hi + 1) if c in cmap and rules.symbol_name(chr(c))]


# ------------------------------------------------------------------------------------------ rendering
def render_glyph(font_path: str, char: str, size: int):
    """One character of a font, black on white, scaled to fill 80% of a ``size`` px square (None: no ink)."""
    from PIL import Image, ImageDraw, ImageFont, ImageOps

    font = ImageFont.truetype(font_path, 4 * size)
    big = Image.new("L", (12 * size, 12 * size), 255)
    ImageDraw.Draw(big).text((4 * size, 4 * size), char, font=font, fill=0)
    box = ImageOps.invert(big).getbbox()
    if box is None:
        return None
    ink = big.crop(box)
    scale = 0.8 * size / max(ink.size)
    ink = ink.resize((max(1, round(ink.width * scale)), max(1, round(ink.height * scale))), Image.LANCZOS)
    out = Image.new("L", (size, size), 255)
    out.paste(ink, ((size - ink.width) // 2, (size - ink.height) // 2))
    return out.convert("RGBA")


def render(job: tuple) -> bytes | None:
    """``("svg", markup, size)``, ``("raster", bytes, size)`` or ``("glyph", (font file, character), size)`` ->
    ``size`` px RGB PNG bytes on white (None if it fails)."""
    kind, payload, size = job
    from PIL import Image

    try:
        if kind == "glyph":
            im = render_glyph(*payload, size)
            if im is None:
                return None
        elif kind == "svg":
            import resvg_py

            data = bytes(resvg_py.svg_to_bytes(svg_string=payload, skip_system_fonts=True, width=size, height=size))
            im = Image.open(io.BytesIO(data))
        else:
            im = Image.open(io.BytesIO(payload))
            im.load()
    except (OSError, ValueError) as exc:  # a file resvg or PIL cannot read: counted as a render failure
        del exc
        return None
    im = im.convert("RGBA")
    side = max(im.size)
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    canvas.alpha_composite(im, ((side - im.width) // 2, (side - im.height) // 2))
    out = canvas.convert("RGB")
    if out.size != (size, size):
        out = out.resize((size, size), Image.LANCZOS)
    buf = io.BytesIO()
    out.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def icon_svg(icon: dict, default_w: float, default_h: float) -> str:
    """An iconify icon as standalone SVG markup, its viewBox padded to a square."""
    left, top = icon.get("left", 0), icon.get("top", 0)
    w, h = icon.get("width", default_w), icon.get("height", default_h)
    side = max(w, h)
    left, top = left - (side - w) / 2, top - (side - h) / 2
    body = icon["body"]
    return (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
            f'viewBox="{left} {top} {side} {side}" width="{side}" height="{side}">{body}</svg>')


# ------------------------------------------------------------------------------------------ sources
class Builder:
    """Collects items ``(meta, job)`` from every source after the rules, with counts of what was dropped."""

    def __init__(self, index: rules.EmojiIndex, held_out: set[str], clipart_val: set[str], modules: Path | None = None,
                 size: int = 96) -> None:
        self.size = size
        self.modules = modules
        self.index = index
        self.held_out = held_out  # normalised names of held-out emoji concepts
        self.clipart_val = clipart_val  # normalised clip-art val names
        self.items: list[tuple[dict, tuple]] = []
        self.dropped: Counter = Counter()
        self.licenses: dict[str, dict] = {}

    # ---- emoji ----------------------------------------------------------------------------------------
    def add_emoji(self, style: str, hexcode: str, job: tuple, license_: str, source: str) -> None:
        concept = rules.concept_of(hexcode)
        entry = self.index.entry(concept)
        if entry is None:
            self.dropped[f"{style}: no emojibase entry"] += 1
            return
        if rules.concept_split(concept) != "train":
            self.dropped[f"{style}: held-out concept"] += 1
            return
        if not rules.keep_skin_variant(style, concept, hexcode):
            self.dropped[f"{style}: skin-tone cap"] += 1
            return
        label = entry["label"]
        codes = [c for c in self.index.shortcodes.get(concept, []) if len(c) > 3]
        meta = {"source": source, "style": style, "kind": "emoji", "codepoint": hexcode.upper(), "concept": concept,
                "concept_split": "train", "name": label, "captions": rules.emoji_captions(label, entry.get("tags", []), codes),
                "flip": rules.may_flip(label, entry.get("group")), "license": license_}
        self.items.append((meta, job))

    def iconify(self, set_name: str) -> dict:
        return json.loads((self.modules / "@iconify/json/json" / f"{set_name}.json").read_text(encoding="utf-8"))

    def emoji_set(self, set_name: str) -> None:
        data = self.iconify(set_name)
        chars = data.get("chars") or self.iconify(BORROW_CHARS[set_name]).get("chars", {}) if set_name in BORROW_CHARS \
            else data.get("chars", {})
        by_name = {name: hexcode for hexcode, name in chars.items()}
        self.note_license(set_name, data["info"])
        w, h = data.get("width", 16), data.get("height", 16)
        for name in sorted(data["icons"]):
            hexcode = rules.map_icon(name, by_name, self.index, compact_ok=(set_name == "fxemoji"))
            if hexcode is None and set_name == "streamline-emojis":
                hexcode = self.index.hex_for_name("flag-" + name)  # country names stand for their flags
            if hexcode is None:
                self.dropped[f"{set_name}: unmapped name"] += 1
                continue
            icon = data["icons"][name]
            self.add_emoji(set_name, hexcode, ("svg", icon_svg(icon, w, h), self.size),
                           data["info"]["license"]["spdx"], f"npm:@iconify/json/{set_name}")

    def flag_set(self, set_name: str) -> None:
        """A set of country flags named by ISO code (``de``, ``gb-eng``; ``flag`` adds ``-4x3`` / ``-1x1``
        drawings): each code that is an emoji flag (regional-indicator pair, or the tag sequence of England,
        Scotland, Wales) goes through :meth:`add_emoji`; regions, languages and other banners are left out."""
        data = self.iconify(set_name)
        self.note_license(set_name, data["info"])
        w, h = data.get("width", 16), data.get("height", 16)
        for name in sorted(data["icons"]):
            hexcode = rules.flag_hexcode(name.removesuffix("-4x3").removesuffix("-1x1"))
            if hexcode is None:
                self.dropped[f"{set_name}: not an emoji flag"] += 1
                continue
            self.add_emoji(set_name, hexcode, ("svg", icon_svg(data["icons"][name], w, h), self.size),
                           data["info"]["license"]["spdx"], f"npm:@iconify/json/{set_name}")

    def symbols(self, fonts: dict[str, Path]) -> None:
        """Unicode symbols (:data:`SYMBOL_BLOCKS`) drawn from each font of ``fonts`` (style -> file): an emoji
        goes through :meth:`add_emoji` with the font as its style; any other symbol is a concept of its own code
        point (the rule OpenMoji's extras follow) under the same split, captioned by its character name."""
        for style, font in fonts.items():
            lic = self.licenses[style] = FONT_LICENSES[style]
            source = f"deb:{lic['package']}"
            for char in font_chars(font):
                hexcode = f"{ord(char):04X}"
                job = ("glyph", (str(font), char), self.size)
                if self.index.entry(hexcode) is not None:
                    self.add_emoji(style, hexcode, job, lic["spdx"], source)
                    continue
                if rules.concept_split(hexcode) != "train":
                    self.dropped[f"{style}: held-out concept"] += 1
                    continue
                name = rules.symbol_name(char)
                if self.name_dropped(style, name):
                    continue
                meta = {"source": source, "style": style, "kind": "symbol", "codepoint": hexcode, "concept": hexcode,
                        "concept_split": "train", "name": name, "captions": rules.symbol_captions(name), "flip": False,
                        "license": lic["spdx"]}
                self.items.append((meta, job))

    def logo_set(self, set_name: str) -> None:
        """Brand and product logos, by icon name (``google-chrome`` -> "google chrome"), through the name rules."""
        data = self.iconify(set_name)
        self.note_license(set_name, data["info"])
        w, h = data.get("width", 16), data.get("height", 16)
        for name in sorted(data["icons"]):
            clean = rules.clean_icon_name(name.removesuffix("-icon").removesuffix("-wordmark"))
            self.add_named(set_name, clean, rules.logo_captions(clean), False,
                           ("svg", icon_svg(data["icons"][name], w, h), self.size),
                           data["info"]["license"]["spdx"], f"npm:@iconify/json/{set_name}", "logo")

    def fluent_3d(self) -> None:
        folder = self.modules / "@lobehub/fluent-emoji-3d/assets"
        self.licenses["fluent-emoji-3d"] = {"name": "MIT", "spdx": "MIT", "author": "Microsoft (Fluent Emoji); LobeHub (package)",
                                            "url": "https://github.com/lobehub/fluent-emoji"}
        for path in sorted(folder.glob("*.webp")):
            self.add_emoji("fluent-emoji-3d", path.stem, ("raster", path.read_bytes(), self.size), "MIT",
                           "npm:@lobehub/fluent-emoji-3d")

    def shared_emoji(self) -> None:
        for style in ("google", "twitter"):
            for meta, png in read_shards(sorted((SHARED / "emoji").glob(f"emoji-{style}-train-*.tar"))):
                self.add_emoji(style, meta["codepoint"], ("raster", png, self.size), meta["license"], "shared:emoji")

    # ---- named pictures -------------------------------------------------------------------------------
    def add_named(self, style: str, name: str, captions: list[str], flip: bool, job: tuple, license_: str,
                  source: str, kind: str) -> None:
        if self.name_dropped(style, name):
            return
        meta = {"source": source, "style": style, "kind": kind, "name": name, "captions": captions, "flip": flip,
                "license": license_}
        self.items.append((meta, job))

    def name_dropped(self, style: str, name: str) -> bool:
        """The name rules of every named picture: True (and counted) if ``name`` is unusable, a clip-art ``val``
        name or a held-out emoji's name."""
        key = rules.norm_name(name)
        reason = ("no usable name" if not key or len(key) < 3 else "clip-art val name" if key in self.clipart_val
                  else "held-out emoji name" if key in self.held_out else None)
        if reason:
            self.dropped[f"{style}: {reason}"] += 1
        return reason is not None

    def icon_set(self, set_name: str) -> None:
        data = self.iconify(set_name)
        self.note_license(set_name, data["info"])
        category_of = {n: c for c, names in (data.get("categories") or {}).items() for n in names}
        w, h = data.get("width", 16), data.get("height", 16)
        for name in sorted(data["icons"]):  # "-flat" / "-2" twins are other drawings of the name: all kept
            clean = rules.clean_icon_name(name)
            kind = "black and white icon" if set_name == "game-icons" else "icon"
            caps = rules.icon_captions(clean, kind, category_of.get(name))
            self.add_named(set_name, clean, caps, rules.may_flip(clean), ("svg", icon_svg(data["icons"][name], w, h), self.size),
                           data["info"]["license"]["spdx"], f"npm:@iconify/json/{set_name}", "icon")

    def tuxpaint(self, stamps: Path) -> None:
        self.licenses["tuxpaint"] = {"name": "GNU General Public License v2", "spdx": "GPL-2.0",
                                            "author": "Tux Paint developers", "url": "https://tuxpaint.org/"}
        files = sorted(p for p in stamps.rglob("*") if p.suffix in (".png", ".svg") and not p.stem.endswith(("_mirror", "_flip")))
        chosen: dict[Path, Path] = {}
        for p in files:  # a stamp may come as both SVG and PNG: take the SVG
            stem = p.with_suffix("")
            if stem not in chosen or p.suffix == ".svg":
                chosen[stem] = p
        for stem, path in sorted(chosen.items()):
            txt = stem.with_suffix(".txt")
            desc = txt.read_text(encoding="utf-8", errors="replace").splitlines()[0].strip() if txt.is_file() else ""
            dat = stem.with_suffix(".dat")
            flags = dat.read_text(errors="replace").split() if dat.is_file() else []
            name = rules.clean_icon_name(stem.name.lstrip("0123456789_-").replace("_", "-"))
            caps = ([desc.rstrip(".")] if desc else []) + rules.icon_captions(name, "picture")
            job = ("svg", path.read_text(encoding="utf-8"), self.size) if path.suffix == ".svg" else ("raster", path.read_bytes(), self.size)
            self.add_named("tuxpaint", name, caps, "nomirror" not in flags and rules.may_flip(name), job, "GPL-2.0",
                           "deb:tuxpaint-stamps-default", "stamp")

    def shared_clipart(self) -> None:
        for meta, png in read_shards(sorted((SHARED / "clipart").glob("clipart-train-*.tar"))):
            name = meta["name"]
            keywords = [k for k in meta.get("keywords", []) if k][:5]
            caps = rules.icon_captions(name, "clip art") + ([f"clip art of {rules.article(name)}: {', '.join(keywords)}"] if keywords else [])
            self.add_named("openclipart", name, list(dict.fromkeys([meta["caption"], *caps])),
                           rules.may_flip(name), ("raster", png, self.size), "public-domain", "shared:clipart", "clip art")

    def note_license(self, set_name: str, info: dict) -> None:
        lic = info.get("license", {})
        self.licenses[set_name] = {"name": lic.get("title"), "spdx": lic.get("spdx"), "url": lic.get("url"),
                                   "author": (info.get("author") or {}).get("name"),
                                   "source": (info.get("author") or {}).get("url")}


def make_builder(modules: Path, size: int) -> Builder:
    """A :class:`Builder` over the installed emojibase tables and the held-out names of ``../shared/data``."""
    en = modules / "emojibase-data/en"
    shortcode_tables = [json.loads((en / f"shortcodes/{n}.json").read_text()) for n in ("emojibase", "github", "cldr")]
    names = json.loads((modules / "emojibase-data/meta/unicode-names.json").read_text())
    index = rules.EmojiIndex(json.loads((en / "data.json").read_text()), shortcode_tables, names)
    return Builder(index, index.held_out_names() | openmoji_held_out_names(), clipart_val_names(), modules, size)


def read_shards(paths: list[Path]):
    """``(json meta, png bytes)`` of every sample in webdataset shards (members grouped by key)."""
    for path in paths:
        with tarfile.open(path) as tar:
            group: dict[str, dict[str, bytes]] = {}
            for m in tar:
                key, _, ext = m.name.partition(".")
                group.setdefault(key, {})[ext] = tar.extractfile(m).read()
            for parts in group.values():
                if "json" in parts and "png" in parts:
                    yield json.loads(parts["json"]), parts["png"]


def clipart_val_names() -> set[str]:
    return {rules.norm_name(m["name"]) for m, _ in read_shards(sorted((SHARED / "clipart").glob("clipart-val-*.tar")))}


def openmoji_held_out_names() -> set[str]:
    """Names of OpenMoji's held-out concepts (metadata only; no OpenMoji image is read for training)."""
    out = set()
    for meta, _ in read_shards(sorted((SHARED / "emoji").glob("emoji-openmoji-*.tar"))):
        if meta["concept_split"] == "test":
            out.add(rules.norm_name(rules.display_label(meta["name"])))
            out.add(rules.norm_name(meta["name"]))
    return out


# ------------------------------------------------------------------------------------------ writing
def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "", ""
    tar.addfile(info, io.BytesIO(data))


def write_shards(items: list[tuple[dict, bytes]], out: Path, prefix: str = "train") -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"{prefix}-*.tar"):
        old.unlink()
    shards = []
    for s in range(0, len(items), SHARD_SIZE):
        path = out / f"{prefix}-{s // SHARD_SIZE:06d}.tar"
        tmp = path.with_suffix(".tar.tmp")
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i, (meta, png) in enumerate(items[s: s + SHARD_SIZE], start=s):
                key = f"{i:07d}"
                add_member(tar, f"{key}.png", png)
                add_member(tar, f"{key}.txt", meta["captions"][0].encode("utf-8"))
                add_member(tar, f"{key}.json", json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8"))
        os.replace(tmp, path)
        shards.append({"shard": path.name, "samples": len(items[s: s + SHARD_SIZE]),
                       "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    return shards


MIT_TEXT = """MIT License

Copyright (c) {holder}

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated
documentation files (the "Software"), to deal in the Software without restriction, including without limitation
the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the Software, and to
permit persons to whom the Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or substantial portions of
the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE
WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR
COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR
OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""
CC_URLS = {"CC0-1.0": "https://creativecommons.org/publicdomain/zero/1.0/legalcode",
           "CC-BY-4.0": "https://creativecommons.org/licenses/by/4.0/legalcode",
           "CC-BY-3.0": "https://creativecommons.org/licenses/by/3.0/legalcode",
           "CC-BY-SA-4.0": "https://creativecommons.org/licenses/by-sa/4.0/legalcode"}


def write_licenses(folder: Path, manifest: dict, modules: Path, stamps_copyright: Path) -> None:
    """``folder/LICENSES``: the licence texts of every source in ``manifest`` and an ``ATTRIBUTION.md`` listing
    each art style with its author, licence and origin (full texts from Debian's common-licenses, the
    packages' own LICENSE files, the Tux Paint stamps' Debian copyright file, and the ../shared/data copies)."""
    out = folder / "LICENSES"
    out.mkdir(parents=True, exist_ok=True)
    common = Path("/usr/share/common-licenses")
    texts = {"Apache-2.0.txt": (common / "Apache-2.0").read_text(encoding="utf-8"),
             "GPL-2.0.txt": (common / "GPL-2").read_text(encoding="utf-8"),
             "tuxpaint-stamps-default_debian_copyright.txt": stamps_copyright.read_text(encoding="utf-8"),
             "emojibase-data_MIT_LICENSE.txt": (modules / "emojibase-data/LICENSE").read_text(encoding="utf-8"),
             "CC-BY-SA-4.0.txt": (SHARED / "emoji/LICENSES/openmoji_CC-BY-SA-4.0_LICENSE.txt").read_text(encoding="utf-8"),
             "openclipart_debian_copyright_public_domain.txt":
                 (SHARED / "clipart/LICENSES/openclipart_debian_copyright_public_domain.txt").read_text(encoding="utf-8")}
    rows = []
    for style, lic in manifest["licenses"].items():
        spdx = lic.get("spdx") or ""
        if style == "openclipart":
            name = "openclipart_debian_copyright_public_domain.txt"
        elif spdx == "MIT" and style != "emojibase-data":
            name = f"{style}_MIT_LICENSE.txt"
            texts[name] = MIT_TEXT.format(holder=lic.get("author") or style)
        elif spdx in CC_URLS:
            name = CC_URLS[spdx]
        elif style in FONT_LICENSES:
            name = f"{FONT_LICENSES[style]['package']}_debian_copyright.txt"
            texts[name] = (stamps_copyright.parents[1] / FONT_LICENSES[style]["package"] / "copyright").read_text(encoding="utf-8")
        elif spdx == "GPL-2.0":
            name = "GPL-2.0.txt, tuxpaint-stamps-default_debian_copyright.txt"
        elif spdx == "Apache-2.0":
            name = "Apache-2.0.txt"
        else:
            name = "emojibase-data_MIT_LICENSE.txt"
        count = manifest["styles"].get(style, "-")  # (flag sets and extras included: shards flags-*, extras-*)
        rows.append(f"| {style} | {count} | {lic.get('author') or ''} | {lic.get('name') or spdx} | {name} | "
                    f"{lic.get('source') or lic.get('url') or ''} |")
    for name, text in texts.items():
        (out / name).write_text(text, encoding="utf-8")
    (out / "ATTRIBUTION.md").write_text(
        "# What the default model was trained on\n\n"
        "Images were rendered or resized to small PNGs (adaptations) by `scripts/build_training_data.py`; the model "
        "weights were trained on them. OpenMoji and Facebook/Apple emoji images were never used.\n\n"
        "| style | images | author | licence | licence text (here or at) | source |\n|---|---:|---|---|---|---|\n"
        + "\n".join(rows) + "\n", encoding="utf-8")


def render_items(b: Builder, workers: int) -> list[tuple[dict, bytes]]:
    """Render every item of ``b`` (failures counted in ``b.dropped``), shuffled with the fixed seed."""
    print(f"{len(b.items)} items; rendering with {workers} workers", file=sys.stderr)
    with ProcessPoolExecutor(workers) as pool:
        pngs = list(pool.map(render, [job for _, job in b.items], chunksize=64))
    items = []
    for (meta, _), png in zip(b.items, pngs):
        if png is None:
            b.dropped[f"{meta['style']}: render failed"] += 1
        else:
            items.append((meta, png))
    random.Random(SEED).shuffle(items)
    return items


def add_shards(manifest_path: Path, manifest: dict, b: Builder, workers: int, key: str, sources: list[str]) -> None:
    """Render what ``b`` collected into shards ``{key}-*.tar`` beside the training shards (which stay as they
    were, so older recipes keep their data), and record them in ``manifest``: ``key`` (sources, samples, styles,
    dropped, shards), their styles and licences, their emoji concepts and their names."""
    items = render_items(b, workers)
    shards = write_shards(items, manifest_path.parent, prefix=key)
    styles = Counter(m["style"] for m, _ in items)
    manifest[key] = {"sets": sources, "samples": len(items), "styles": dict(sorted(styles.items())),
                     "dropped": dict(sorted(b.dropped.items())), "shards": shards}
    manifest["styles"] = dict(sorted((manifest["styles"] | styles).items()))
    manifest["licenses"] = dict(sorted((manifest["licenses"] | {s: b.licenses.get(s) for s in styles}).items()))
    metas = [m for m, _ in items]
    manifest["concepts"] = sorted(set(manifest["concepts"]) | set(rules.record_concepts(metas)))
    manifest["names"] = sorted(set(manifest.get("names", [])) | set(rules.record_names(metas)))
    manifest_path.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def collect_flags(b: Builder) -> Builder:
    for name in FLAG_SETS:
        b.flag_set(name)
    return b


def collect_extras(b: Builder, fonts: dict[str, Path]) -> Builder:
    b.symbols(fonts)
    for name in LOGO_SETS:
        b.logo_set(name)
    return b


def add_flags(manifest_path: Path, manifest: dict, b: Builder, workers: int) -> None:
    """The flag sets (:data:`FLAG_SETS`) into shards ``flags-*.tar`` (see :func:`add_shards`)."""
    collect_flags(b)
    add_shards(manifest_path, manifest, b, workers, "flags", list(FLAG_SETS))


def extras_sources(fonts: dict[str, Path]) -> list[str]:
    return [f"font:{style}" for style in fonts] + list(LOGO_SETS)


def add_extras(manifest_path: Path, manifest: dict, b: Builder, workers: int, fonts: dict[str, Path]) -> None:
    """Unicode symbols from ``fonts`` and the logo sets (:data:`LOGO_SETS`) into shards ``extras-*.tar``."""
    collect_extras(b, fonts)
    add_shards(manifest_path, manifest, b, workers, "extras", extras_sources(fonts))


def built(folder: Path, part: dict | None, sources: list[str]) -> bool:
    return bool(part) and part.get("sets") == sources and all((folder / s["shard"]).is_file() for s in part["shards"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/kontrast-data"))
    ap.add_argument("--size", type=int, default=96, help="stored image side in pixels")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dry-run", action="store_true", help="count what would be built, render nothing")
    ap.add_argument("--licenses-only", action="store_true", help="only (re)write LICENSES/ from an existing manifest")
    ap.add_argument("--force", action="store_true", help="rebuild even if CACHE/shards has a complete build")
    args = ap.parse_args()
    cache = Path(args.cache)
    modules, stamps = install(cache)
    fonts = install_fonts(cache)
    copyright_file = stamps.parents[1] / "doc/tuxpaint-stamps-default/copyright"
    if args.licenses_only:
        out = cache / "shards"
        write_licenses(out, json.loads((out / "manifest.json").read_text(encoding="utf-8")), modules, copyright_file)
        return 0
    done = cache / "shards" / "manifest.json"
    if done.is_file() and not (args.force or args.dry_run):
        old = json.loads(done.read_text(encoding="utf-8"))
        if old.get("packages", {}).get("npm") == NPM_PACKAGES and old.get("image_size") == args.size and \
                all((done.parent / s["shard"]).is_file() for s in old["shards"]):
            have_flags = built(done.parent, old.get("flags"), list(FLAG_SETS))
            have_extras = built(done.parent, old.get("extras"), extras_sources(fonts))
            if have_flags and have_extras:
                print(f"{done.parent}: already built ({old['samples']} samples, {old['flags']['samples']} flags, "
                      f"{old['extras']['samples']} extras); --force rebuilds", file=sys.stderr)
                return 0
            if not have_flags:  # an older build: add what it lacks
                add_flags(done, old, make_builder(modules, args.size), args.workers)
            if not have_extras:
                add_extras(done, old, make_builder(modules, args.size), args.workers, fonts)
            write_licenses(done.parent, old, modules, copyright_file)
            return 0
    b = make_builder(modules, args.size)
    for name in EMOJI_SETS:
        b.emoji_set(name)
    b.fluent_3d()
    b.shared_emoji()
    for name in ICON_SETS:
        b.icon_set(name)
    b.tuxpaint(stamps)
    b.shared_clipart()
    b.licenses |= {"google": {"name": "Apache License 2.0", "spdx": "Apache-2.0", "author": "Google (Noto Emoji)"},
                   "twitter": {"name": "CC BY 4.0", "spdx": "CC-BY-4.0", "author": "Twitter, Inc and other contributors"},
                   "openclipart": {"name": "Public domain (Openclipart 0.18)", "spdx": "CC0-1.0", "author": "Openclipart"},
                   "emojibase-data": {"name": "MIT", "spdx": "MIT", "author": "Miles Johnson (CLDR annotations: Unicode License)"}}
    assert not any(s in NEVER for s in {m["style"] for m, _ in b.items}), "OpenMoji must never enter training"
    if args.dry_run:
        fb = collect_flags(make_builder(modules, args.size))
        xb = collect_extras(make_builder(modules, args.size), fonts)
        print(json.dumps({"items": len(b.items), "styles": Counter(m["style"] for m, _ in b.items),
                          "dropped": dict(sorted(b.dropped.items())), "flag items": len(fb.items),
                          "flag styles": Counter(m["style"] for m, _ in fb.items),
                          "flags dropped": dict(sorted(fb.dropped.items())), "extra items": len(xb.items),
                          "extra styles": Counter(m["style"] for m, _ in xb.items),
                          "extras dropped": dict(sorted(xb.dropped.items()))}, indent=1))
        return 0
    items = render_items(b, args.workers)
    out = cache / "shards"
    shards = write_shards(items, out)
    styles = Counter(m["style"] for m, _ in items)
    manifest = {
        "version": 1, "image_size": args.size, "samples": len(items), "styles": dict(sorted(styles.items())),
        "kinds": dict(Counter(m["kind"] for m, _ in items)), "captions_per_sample": round(sum(len(m["captions"]) for m, _ in items) / len(items), 2),
        "packages": {"npm": NPM_PACKAGES, "deb": {DEB_PACKAGE[0]: DEB_PACKAGE[1]}, "shared": ["emoji google/twitter train", "clipart train"]},
        "licenses": {s: b.licenses.get(s) for s in sorted(styles)} | {"emojibase-data": b.licenses["emojibase-data"]},
        "dropped": dict(sorted(b.dropped.items())), "shards": shards,
        "concepts": rules.record_concepts(m for m, _ in items),
        "names": rules.record_names(m for m, _ in items),
    }
    add_flags(out / "manifest.json", manifest, make_builder(modules, args.size), args.workers)
    add_extras(out / "manifest.json", manifest, make_builder(modules, args.size), args.workers, fonts)
    write_licenses(out, manifest, modules, copyright_file)
    print(json.dumps({k: manifest[k] for k in ("samples", "styles", "dropped")}, indent=1), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
