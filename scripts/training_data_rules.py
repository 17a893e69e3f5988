"""The rules of the default model's training data: emoji concepts and their split, name -> code point mapping,
captions, which images may be mirrored, and which names are held out.

Pure functions over small in-memory tables (no files, no network), so that ``tests/test_training_data_rules.py``
can check them on hand-made entries. ``scripts/build_training_data.py`` applies them to the real packages.

The concept split is the one of ``../shared/data/README.md``: a concept is the base code point sequence
(uppercase hex, FE0F removed, skin-tone modifiers U+1F3FB..U+1F3FF removed), and it is held out
(``"test"``) when ``int(sha256("clip-emoji-concept-split-v1:" + concept)[:12], 16) / 2**48 < 0.20``. A
held-out concept never enters training, in any art style.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence

SPLIT_SALT = "clip-emoji-concept-split-v1:"
TEST_FRACTION = 0.20
SKIN_TONES = ("1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF")
# Name suffixes that say which skin tone an icon shows (longest first, so "medium-light" wins over "light").
SKIN_SUFFIXES = tuple(sorted(
    [f"-{t}-skin-tone" for t in ("light", "medium-light", "medium", "medium-dark", "dark")]
    + [f"-{t}" for t in ("light", "medium-light", "medium", "medium-dark", "dark")]
    + [f"-tone{i}" for i in range(1, 6)] + [f"-tone-{i}" for i in range(1, 6)], key=len, reverse=True))

# Words in a name that mean a mirrored image says something else (or shows text).
NO_FLIP_WORDS = frozenset(["left", "right", "arrow", "arrows", "clock", "flag", "flags", "letter", "letters", "text", "font", "number", "numbers", "digit", "digits", "keycap", "abc", "abcd", "alphabet", "button", "sign", "signs", "symbol", "symbols", "map", "maps", "calendar", "up", "down", "forward", "backward", "back", "next", "previous", "rewind", "reply", "share", "undo", "redo", "redirect", "login", "logout", "exit", "enter", "import", "export", "indent", "outdent", "align", "list", "quote", "bold", "italic", "underline", "strikethrough", "sort", "trend", "trending", "chart", "graph", "growth", "increase", "decrease", "ascending", "descending", "rotate", "clockwise", "counterclockwise", "anticlockwise", "turn", "return", "refresh", "reload", "sync", "play", "pause", "fast", "keyboard", "type", "typing", "newspaper", "book", "books", "document", "file", "page", "note", "notes", "memo", "scroll", "bookmark", "label", "tag", "ticket", "receipt", "card", "id", "badge", "sale", "percent", "dollar", "euro", "pound", "yen", "currency", "money", "coin", "coins", "barcode", "qr", "code", "signal", "wifi", "battery", "steering"])
# Suffixes of icon names that say nothing about the picture ("-1", "-flat", "-alt", ...).
SUFFIX_RE = re.compile(r"(-(\d+|flat|alt|filled|fill|solid|outline|line|color|colored|duo|duotone|twotone|o|v\d+))+$")


def concept_of(hexcode: str) -> str:
    """Base code point sequence of an emoji: ``"1f44b-1F3FB"`` -> ``"1F44B"``, ``"2764-FE0F"`` -> ``"2764"``."""
    parts = [p.upper().lstrip("0").rjust(4, "0") for p in re.split(r"[-_ ]", hexcode.strip()) if p]
    return "-".join(p for p in parts if p != "FE0F" and p not in SKIN_TONES)


def flag_hexcode(code: str) -> str | None:
    """The emoji code points of a flag named by its ISO code: ``"de"`` -> ``"1F1E9-1F1EA"`` (regional-indicator
    pair), ``"gb-eng"`` -> England's tag sequence; None for anything else (regions, languages, banners)."""
    code = code.lower()
    if len(code) == 2 and code.isascii() and code.isalpha():
        return "-".join(f"{0x1F1E6 + ord(c) - ord('a'):X}" for c in code)
    if code in ("gb-eng", "gb-sct", "gb-wls"):
        tags = [f"{0xE0000 + ord(c):X}" for c in code.replace("-", "")]
        return "-".join(["1F3F4", *tags, "E007F"])
    return None


def concept_split(concept: str) -> str:
    """``"test"`` (held out in every style) or ``"train"``, by the salted hash of ``../shared/data/README.md``."""
    u = int(hashlib.sha256((SPLIT_SALT + concept).encode("utf-8")).hexdigest()[:12], 16) / 2 ** 48
    return "test" if u < TEST_FRACTION else "train"


def has_skin_tone(hexcode: str) -> bool:
    return any(p.upper() in SKIN_TONES for p in re.split(r"[-_ ]", hexcode))


def slug(text: str) -> str:
    """``"flag: Côte d’Ivoire"`` -> ``"flag-cote-d-ivoire"``: lowercase ASCII words joined by ``-``."""
    import unicodedata

    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    return "-".join(re.findall(r"[a-z0-9]+", text.replace("’", "").replace("'", "")))


def compact(text: str) -> str:
    """``"broken-heart"`` -> ``"brokenheart"`` (fxemoji writes names without separators)."""
    return slug(text).replace("-", "")


TONE_WORDS = {"light": 1, "medium-light": 2, "medium": 3, "medium-dark": 4, "dark": 5}


def strip_skin_suffix(name: str) -> tuple[str, int | None]:
    """``"waving-hand-medium-light-skin-tone"`` -> ``("waving-hand", 2)``; no tone suffix -> ``(name, None)``."""
    for suffix in SKIN_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            word = suffix[1:].removesuffix("-skin-tone")
            tone = TONE_WORDS.get(word) or int(word[-1])
            return name[: -len(suffix)], tone
    return name, None


def with_tone(hexcode: str, tone: int | None) -> str:
    """Append skin tone ``tone`` (1..5) to a code point sequence (same concept, see :func:`concept_of`)."""
    return hexcode if tone is None else f"{hexcode}-{SKIN_TONES[tone - 1]}"


class EmojiIndex:
    """Emoji by code point and by name: emojibase entries (``hexcode``, ``label``, ``tags``, ``group``, ``skins``),
    shortcodes and Unicode names, so that an icon set's names can be mapped to code points.

    A name key that two different concepts claim is ambiguous and maps to nothing (the icon is left out).
    """

    def __init__(self, entries: Sequence[Mapping], shortcodes: Iterable[Mapping[str, object]] = (),
                 unicode_names: Mapping[str, str] | None = None) -> None:
        self.by_hex: dict[str, Mapping] = {}
        self.shortcodes: dict[str, list[str]] = {}
        keys: dict[str, set[str]] = {}
        compact_keys: dict[str, set[str]] = {}

        def add(key: str, hexcode: str) -> None:
            if key:
                keys.setdefault(key, set()).add(hexcode)
                compact_keys.setdefault(key.replace("-", ""), set()).add(hexcode)

        for e in entries:
            if e.get("group") == 2:  # components (skin-tone swatches, hair parts) are not emoji of their own
                continue
            hexcode = e["hexcode"].upper()
            self.by_hex[concept_of(hexcode)] = e
            add(slug(e["label"]), hexcode)
            if e["label"].startswith("flag: "):
                add("flag-for-" + slug(e["label"][6:]), hexcode)  # emojione: "flag-for-fiji"
                add("flag-" + slug(e["label"][6:]), hexcode)
            for skin in e.get("skins") or ():
                add(slug(skin["label"]), skin["hexcode"].upper())
        for table in shortcodes:
            for hexcode, codes in table.items():
                codes = [codes] if isinstance(codes, str) else list(codes)
                self.shortcodes.setdefault(concept_of(hexcode), [])
                for c in codes:
                    if c not in self.shortcodes[concept_of(hexcode)]:
                        self.shortcodes[concept_of(hexcode)].append(c)
                    add(slug(c), hexcode.upper())
        for hexcode, name in (unicode_names or {}).items():
            add(slug(name), hexcode.upper())
        self._keys = {k: next(iter(v)) for k, v in keys.items() if len({concept_of(h) for h in v}) == 1
                      or len(v) == 1}
        self._compact = {k: next(iter(v)) for k, v in compact_keys.items() if len({concept_of(h) for h in v}) == 1}

    def entry(self, hexcode: str) -> Mapping | None:
        """The emojibase entry of a code point sequence's concept, or None."""
        return self.by_hex.get(concept_of(hexcode))

    def hex_for_name(self, name: str, compact_ok: bool = False) -> str | None:
        """Code points for an icon name (``"grinning-face"``, ``"flag-for-fiji"``), or None when unknown/ambiguous."""
        key = slug(name)
        if key in self._keys:
            return self._keys[key]
        base, tone = strip_skin_suffix(key)
        if tone and base in self._keys and not has_skin_tone(self._keys[base]):
            return with_tone(self._keys[base], tone)
        if compact_ok:
            return self._compact.get(key.replace("-", ""))
        return None

    def held_out_names(self) -> set[str]:
        """Normalised names of every held-out emoji concept (labels and shortcodes), to keep icons of them out."""
        out = set()
        for concept, e in self.by_hex.items():
            if concept_split(concept) == "test":
                out.add(norm_name(display_label(e["label"])))
                out.add(norm_name(e["label"]))
                out.update(norm_name(c.replace("_", " ")) for c in self.shortcodes.get(concept, ()))
        out.discard("")
        return out


def map_icon(name: str, chars_by_name: Mapping[str, str], index: EmojiIndex, compact_ok: bool = False) -> str | None:
    """Code points of an icon in an emoji set: the set's own ``chars`` map first, then emojibase names."""
    if name in chars_by_name:
        return chars_by_name[name].upper()
    base, tone = strip_skin_suffix(name)
    if tone and base in chars_by_name:
        return with_tone(chars_by_name[base].upper(), tone)
    return index.hex_for_name(name, compact_ok=compact_ok)


# ------------------------------------------------------------------------------------------------ names
def display_label(label: str) -> str:
    """CLDR label as the captions write it: ``flag: X`` -> ``flag of X``, ``keycap: 1`` -> ``keycap 1``."""
    if label.startswith("flag: "):
        return "flag of " + label[6:]
    if label.startswith("keycap: "):
        return "keycap " + label[8:]
    return label.replace(": ", ", ")


def norm_name(name: str) -> str:
    """Name as compared against held-out names: lowercase words, no article, no plural ``s``."""
    words = re.findall(r"[a-z0-9]+", name.lower().replace("’", "").replace("'", ""))
    if words and words[0] in ("a", "an", "the"):
        words = words[1:]
    return " ".join(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in words)


def record_concepts(metas: Iterable[Mapping]) -> list[str]:
    """The emoji concepts a training record lists: those of every picture that has one (emoji, font symbols)."""
    return sorted({m["concept"] for m in metas if "concept" in m})


def record_names(metas: Iterable[Mapping]) -> list[str]:
    """The picture names a training record lists (normalised): every picture's but the emoji's and the font
    symbols', which the record holds by concept."""
    return sorted({norm_name(m["name"]) for m in metas if m["kind"] not in ("emoji", "symbol")})


def clean_icon_name(name: str) -> str:
    """``"arrow-reload-horizontal-1-flat"`` -> ``"arrow reload horizontal"``; ``"boot-kick"`` -> ``"boot kick"``."""
    name = SUFFIX_RE.sub("", name.lower())
    name = re.sub(r"(?<=[a-z])(\d+)$", "", name)  # "chemistry5" -> "chemistry"
    return " ".join(w for w in re.split(r"[-_\s]+", name) if w)


def article(phrase: str) -> str:
    """``"apple"`` -> ``"an apple"``; phrases starting with a digit or a capital letter are left bare."""
    if not phrase or phrase[0].isdigit() or phrase[0].isupper():
        return phrase
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


# --------------------------------------------------------------------------------------------- captions
def emoji_captions(label: str, tags: Sequence[str], shortcodes: Sequence[str] = ()) -> list[str]:
    """Several captions of one emoji (the loader samples one per epoch): the forms prompts use, with tags,
    and with a shortcode's words."""
    shown = display_label(label)
    kept = [t for t in sorted(dict.fromkeys(tags)) if t.lower() not in shown.lower()][:5]
    caps = [f"an emoji of {article(shown)}", f"an emoji of {label}", shown, f"a picture of {article(shown)}"]
    if kept:
        caps.append(f"an emoji of {article(shown)}: {', '.join(kept)}")
    for code in shortcodes[:2]:
        words = code.replace("_", " ").strip()
        if words and norm_name(words) != norm_name(shown):
            caps.append(f"an emoji of {article(words)}")
            break
    return list(dict.fromkeys(caps))


def icon_captions(name: str, kind: str = "icon", category: str | None = None) -> list[str]:
    """Captions of a named icon (``kind``: ``"icon"``, ``"clip art"``, ``"picture"``)."""
    noun = "clip art of" if kind == "clip art" else f"{article(kind)} of"
    caps = [f"{noun} {article(name)}", name, f"a picture of {article(name)}"]
    if category:
        caps.append(f"{noun} {article(name)}: {category.lower()}")
    return list(dict.fromkeys(caps))


def symbol_name(char: str) -> str | None:
    """Caption name of a Unicode symbol from its character name: ``"\u265d"`` -> ``"black chess bishop"``,
    ``"\U0001f1e6"`` -> ``"regional indicator A"`` (the way emoji sets name it); None for unnamed code points."""
    import unicodedata

    name = unicodedata.name(char, "")
    if not name:
        return None
    if name.startswith("REGIONAL INDICATOR SYMBOL LETTER "):
        return "regional indicator " + name[-1]
    return name.lower()


def symbol_captions(name: str) -> list[str]:
    """Captions of a Unicode symbol drawn from a font (the loader samples one per epoch)."""
    return list(dict.fromkeys([f"an emoji of {article(name)}", name, f"the symbol {name}", f"a picture of {article(name)}"]))


def logo_captions(name: str) -> list[str]:
    """Captions of a brand or product logo named ``name``."""
    return list(dict.fromkeys([f"an emoji of {name}", name, f"the {name} logo", f"a logo of {name}"]))


def may_flip(name: str, group: int | None = None) -> bool:
    """Whether a mirror image keeps the caption true: not for flags, symbols, arrows, text, clocks, money, ..."""
    if group in (8, 9):  # emoji symbols (arrows, keycaps, letters, signs) and flags
        return False
    words = set(re.findall(r"[a-z]+", name.lower()))
    return not (words & NO_FLIP_WORDS) and not re.search(r"(^|\s)[a-z](\s|$)", name.lower())


def skin_tones(hexcode: str) -> tuple[int, ...]:
    """Skin tones (1..5) in a code point sequence, in order."""
    return tuple(SKIN_TONES.index(p.upper()) + 1 for p in re.split(r"[-_ ]", hexcode) if p.upper() in SKIN_TONES)


def keep_skin_variant(style: str, concept: str, hexcode: str) -> bool:
    """Cap skin-tone variants: of a concept's toned images in one style keep only those in one tone, chosen by
    a salted hash of (style, concept) so that the styles together still show every tone."""
    tones = skin_tones(hexcode)
    if not tones:
        return True
    chosen = int(hashlib.sha256(f"skin-cap-v1:{style}:{concept}".encode()).hexdigest()[:8], 16) % 5 + 1
    return all(t == chosen for t in tones)
