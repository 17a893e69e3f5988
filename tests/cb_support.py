"""Run CLIP_benchmark 1.6.2's own code next to kontrast: small datasets in its layout, and its CLI.

Imported by the tests and by ``tests/fixtures/clip_benchmark/make_fixtures.py``; run as a script it *is*
CLIP_benchmark's command line (``clip_benchmark.cli.main``) with the ``kontrast`` model type registered:

    python tests/cb_support.py eval --model_type kontrast --model default --pretrained "" \
        --dataset wds/emoji_category --dataset_root DIR --no_amp --recall_k 1 5 10

Where torchvision (or open_clip, pycocoevalcap) cannot be imported, empty stand-in modules take their
place: CLIP_benchmark imports them at the top of modules whose other parts it needs, but a webdataset
folder and a kontrast model use none of their code. Where torchvision's C ops are missing (the peers
virtualenv), their two op names are declared so that the real torchvision and open_clip import. Its
``accuracy`` calls ``float()`` on a one-element array, which NumPy 2.4 refuses: that module's ``float``
is given ``.item()`` for arrays (the metric's code is unchanged).
"""

from __future__ import annotations

import builtins
import importlib.abc
import importlib.machinery
import importlib.util
import subprocess
import sys
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
EMOJI_VAL = "emoji/emoji-google-val_concepts-000000.tar"

#: name -> converter arguments (scripts/to_clip_benchmark.py); small, so CLIP_benchmark runs in seconds.
DATASETS = {
    "wds_emoji_category": ["--type", "classification", "--label-field", "category", "--limit", "96", "--shard-size", "40"],
    "wds_emoji_names": ["--type", "classification", "--label-field", "name", "--languages", "de", "--limit", "48"],
    "wds_emoji_keywords": ["--type", "multilabel", "--label-field", "keywords", "--top-classes", "10", "--limit", "96"],
    "wds_emoji_captions": ["--type", "retrieval", "--caption-fields", "caption", "name", "--limit", "96"],
}


def converter():
    """``scripts/to_clip_benchmark.py`` as a module."""
    spec = importlib.util.spec_from_file_location("to_clip_benchmark", REPO / "scripts" / "to_clip_benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_datasets(data_dir: Path, out: Path, names=tuple(DATASETS)) -> dict[str, Path]:
    """Write the datasets of ``DATASETS`` (from ``data_dir``, i.e. ../shared/data) under ``out``."""
    convert = converter()
    made = {}
    for name in names:
        target = out / name
        if not (target / "test" / "nshards.txt").is_file():
            convert.main([str(data_dir / EMOJI_VAL), "--out", str(target), *DATASETS[name]])
        made[name] = target
    return made


def run_cli(argv: list[str], python: str = sys.executable, env: dict | None = None) -> subprocess.CompletedProcess:
    """CLIP_benchmark's CLI (this file as a script) in a fresh interpreter."""
    return subprocess.run([python, str(Path(__file__).resolve()), *argv], capture_output=True, text=True, env=env, check=False,
                          timeout=900)


# ---- what the script does before handing over to clip_benchmark.cli ------------------------------------
class _StandIn(types.ModuleType):
    """An importable empty module: every attribute is a class that cannot be instantiated."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        if name == "list_pretrained":  # open_clip.list_pretrained() runs at import of model_collection
            return lambda *a, **k: []

        def refuse(*_a, **_k):
            raise RuntimeError(f"{self.__name__}.{name} is a stand-in (not installed here)")

        return type(name, (), {"__init__": refuse})


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots: set[str]) -> None:
        self.roots = roots

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in self.roots and self._from_clip_benchmark():
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    @staticmethod
    def _from_clip_benchmark() -> bool:
        """Only CLIP_benchmark's imports get stand-ins (transformers probes for torchvision too)."""
        frame = sys._getframe(1)
        while frame is not None:
            if str(frame.f_globals.get("__name__", "")).startswith("clip_benchmark"):
                return True
            frame = frame.f_back
        return False

    def create_module(self, spec):
        return _StandIn(spec.name)

    def exec_module(self, module) -> None:
        module.__path__ = []


def _prepare_imports() -> list[str]:
    """Make torchvision / open_clip / pycocoevalcap importable; returns the names that are stand-ins."""
    missing = set()
    try:
        import open_clip  # noqa: F401
    except RuntimeError as exc:  # torchvision without its C ops
        if "torchvision::" not in str(exc):
            raise
        for name in [m for m in sys.modules if m.startswith(("torchvision", "open_clip"))]:
            del sys.modules[name]
        import torch

        lib = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _prepare_imports.lib = lib
    except ImportError:
        missing.add("open_clip")
    for root in ("torchvision", "pycocoevalcap"):
        try:
            importlib.import_module(root)
        except ImportError:
            missing.add(root)
    if missing:
        try:  # transformers asks once (and caches) whether torchvision exists: ask before stand-ins appear
            from transformers.utils import import_utils

            import_utils.is_torchvision_available()
        except ImportError:
            pass
        sys.meta_path.insert(0, _StandInFinder(missing))
    return sorted(missing)


def _float_of_arrays(x=0.0, *args):
    """``float`` that takes one-element arrays as NumPy < 2.4 did."""
    if isinstance(x, np.ndarray):
        return builtins.float(x.item())
    return builtins.float(x, *args)


def main(argv: list[str]) -> int:
    stand_ins = _prepare_imports()
    if stand_ins:
        print(f"stand-in modules: {', '.join(stand_ins)}", file=sys.stderr)
    from clip_benchmark.metrics import zeroshot_classification

    zeroshot_classification.float = _float_of_arrays  # the module's float(), not the metric's code
    from kontrast.evaluate.cb_model import main as cb_main

    return cb_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
