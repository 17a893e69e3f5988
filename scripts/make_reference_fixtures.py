"""Make the model-family reference fixtures with the real libraries (open_clip 3.3.0, transformers 5.23, timm).

    /work/peers/bin/python scripts/make_reference_fixtures.py [--out tests/fixtures/families] [--only NAME ...]

Each family is one function ``make_<name>(ctx) -> dict`` registered with ``@family`` in a module of
``scripts/fixture_families/``: it builds a tiny
random-weight model with the reference library, saves it in that library's REAL layout under
``<out>/<name>/`` (the files a user downloads), runs the library on the shared inputs and writes
``<out>/<name>/expected.safetensors`` (+ whatever the family needs). The returned dict (config summary,
reference calls, cross-check numbers) goes into ``<out>/manifest.json``; ``README.md`` there says how to
read everything. Families are independent: ``--only`` regenerates some without touching the others'
files (the manifest keeps their entries).

Not shipped and not imported by kontrast or its tests: the tests read only the files this writes, so they
run without open_clip / transformers / timm. Everything runs on CPU in float32 with one thread; every float
tensor of every model is re-drawn from a seeded generator (no LayerNorm or bias keeps its trivial default, so a
loader that skips a tensor is caught).

Adding a family: write ``make_<name>(ctx)`` decorated with ``@family("<name>")`` in a module of
``scripts/fixture_families/`` (a new module is picked up by itself; ``common.py`` has ``FamilyContext`` and the
shared helpers); keep checkpoints tiny (widths 32-128, 1-2 layers, small vocabularies) so the committed
fixtures stay a few MB.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fixture_families import common
from fixture_families.common import FAMILIES, FamilyContext, sha256, versions

DEFAULT_OUT = common.REPO / "tests" / "fixtures" / "families"


def load_families() -> None:
    """Import every module of ``fixture_families`` so their ``@family`` functions register."""
    import fixture_families

    for info in pkgutil.iter_modules(fixture_families.__path__):
        if info.name != "common":
            importlib.import_module(f"fixture_families.{info.name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--only", nargs="*", choices=sorted(FAMILIES), help="families to (re)make; default all")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    names = args.only or sorted(FAMILIES)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest_path = args.out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"families": {}}
    manifest["versions"] = versions()
    for name in names:
        folder = args.out / name
        if folder.is_dir():
            for stale in sorted(folder.rglob("*"), reverse=True):
                stale.unlink() if stale.is_file() else stale.rmdir()
        folder.mkdir(parents=True, exist_ok=True)
        print(f"[{name}] ...", flush=True)
        entry = FAMILIES[name](FamilyContext(out=folder))
        entry["files"] = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": sha256(p)}
                          for p in sorted(folder.rglob("*")) if p.is_file()}
        manifest["families"][name] = entry
        print(f"[{name}] {sum(f['bytes'] for f in entry['files'].values()):,} bytes", flush=True)
    manifest["families"] = dict(sorted(manifest["families"].items()))
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return 0


if __name__ == "__main__":
    load_families()
    sys.exit(main())
