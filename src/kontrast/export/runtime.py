"""onnxruntime back end: ``kontrast.load(path, backend="onnx")``.

``OnnxCLIP`` runs the exported towers with onnxruntime and looks like a kontrast ``CLIP`` to the code
that uses one (``encode_image``, ``encode_text``, ``logit_scale``, ``get_logits``, ``config``,
``image_size``, ``embed_dim``, ``context_length``; ``next(model.parameters())`` and
``next(model.visual.parameters())`` report the CPU and float32, so the batch pipeline, zero-shot and
search code feed it unchanged). Token features and training need the PyTorch back end.

``load_onnx`` accepts an export folder (or one of its ``.onnx`` files) or anything ``kontrast.load``
accepts; in the latter case the model is exported once into a cache folder named by its fingerprint
(``$KONTRAST_CACHE/onnx/<fingerprint>``, else ``~/.cache/kontrast/onnx/<fingerprint>``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..errors import KontrastError
from ..models.clip import CLIP
from ..record import ModelRecord, PreprocessConfig, build_preprocess, build_tokenizer
from .onnx_export import BUNDLED_TOKENIZER, MANIFEST, export_onnx, read_manifest

log = logging.getLogger(__name__)

ONNX_PRECISIONS = ("fp32", "int8")
INT8_SUFFIX = ".int8-{scheme}.onnx"  # s8 or u8 weights, see kontrast.export.quantize.int8_scheme
TEXT_FLOAT_BLOCKS = (0,)  # text-tower blocks kept float32 under int8 (see kontrast.export.quantize)
TEMP_PREFIX = "kontrast-onnx-tmp-"


def cache_root() -> Path:
    """``$KONTRAST_CACHE/onnx`` if set, else ``~/.cache/kontrast/onnx``."""
    root = os.environ.get("KONTRAST_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "kontrast") / "onnx"


class OnnxTower(nn.Module):
    """One onnxruntime session: a float32/int64 tensor in, a float32 tensor ``[N, E]`` out.

    The module holds one empty float32 parameter, so ``next(tower.parameters())`` tells callers the
    device and dtype to feed (CPU, float32), as it does for a PyTorch tower.
    """

    def __init__(self, path: Path, input_name: str, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no busy-waiting between runs: spinning pool threads would take the CPU from PyTorch, the data
        # loader and other sessions; at batch sizes worth batching it costs no throughput (measured)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path, self.input_name = path, input_name
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.probe = nn.Parameter(torch.zeros(0), requires_grad=False)

    def forward(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            device = x.device
            array = x.detach().cpu().numpy()
        else:
            device, array = torch.device("cpu"), np.asarray(x)
        array = np.ascontiguousarray(array, dtype=np.int64 if self.input_name == "input_ids" else np.float32)
        if not len(array):  # an empty batch: some graphs cannot reshape zero rows
            dim = self.session.get_outputs()[0].shape[-1]
            return torch.zeros(0, dim if isinstance(dim, int) else 0, device=device)
        out = self.session.run(None, {self.input_name: array})[0]
        return torch.from_numpy(out).to(device)


class OnnxCLIP(nn.Module):
    """A CLIP whose towers run in onnxruntime (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike, precision: str = "fp32", threads: int | None = None) -> None:
        super().__init__()
        if precision not in ONNX_PRECISIONS:
            raise KontrastError(f"precision {precision!r} is not available with backend='onnx'; use one of "
                                f"{', '.join(ONNX_PRECISIONS)} (or backend='torch' for bf16/fp16)")
        folder = Path(folder)
        manifest = read_manifest(folder)
        self.folder, self.manifest, self.precision, self.backend = folder, manifest, precision, "onnx"
        self.record = manifest_record(manifest, folder / MANIFEST)
        files = ensure_precision(folder, manifest, precision)
        self.visual = OnnxTower(files["image"], manifest["inputs"]["image"], threads)
        self.text_tower = OnnxTower(files["text"], manifest["inputs"]["text"], threads)
        self.logit_scale = nn.Parameter(torch.tensor(float(manifest["logit_scale"])), requires_grad=False)
        bias = manifest.get("logit_bias")
        self.logit_bias = None if bias is None else nn.Parameter(torch.tensor(float(bias)), requires_grad=False)
        self.context_length = int(manifest["context_length"])
        self.checkpoint_path = manifest.get("source") or str(folder)
        self.fixed_fingerprint = manifest["fingerprint"]  # read by kontrast.fingerprint(model): graphs do not change
        self.eval()

    @property
    def config(self) -> ModelConfig:
        return self.record.arch

    @property
    def image_size(self) -> int:
        return int(self.manifest["image_size"])

    @property
    def sigmoid(self) -> bool:
        """Probabilities are a sigmoid per label for SigLIP-trained models (a logit bias), as in PyTorch."""
        return self.logit_bias is not None

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def encode_image(self, images: torch.Tensor, normalize: bool = False, output: str = "embedding",
                     **_: Any) -> torch.Tensor:
        """Image embeddings ``[N, E]`` from pixels ``[N, 3, H, W]`` (float32 in, float32 out)."""
        if output != "embedding":
            raise KontrastError(f"output={output!r} needs the PyTorch back end (load with backend='torch')")
        features = self.visual(images)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, ids: torch.Tensor, normalize: bool = False, output: str = "embedding",
                    **_: Any) -> torch.Tensor:
        """Text embeddings ``[N, E]`` from token ids ``[N, L]``.

        Ids that cannot change any feature are cut off first, as the PyTorch model does: after the batch's
        last end-of-text token (CLIP text towers), or trailing padding columns (Hugging Face text towers).
        """
        if output != "embedding":
            raise KontrastError(f"output={output!r} needs the PyTorch back end (load with backend='torch')")
        ids = torch.as_tensor(ids)
        rule = self.manifest.get("text_truncation")
        if len(ids) and rule == "eot":
            ids = ids[:, : int(ids.argmax(dim=-1).max()) + 1]  # [N, L] -> [N, L']
        elif len(ids) and rule == "padding":
            used = (ids != int(self.manifest.get("pad_token_id", 0))).any(dim=0)
            used[0] = True  # the first (CLS) position is always attended
            ids = ids[:, : int(used.nonzero().max()) + 1]  # [N, L] -> [N, L']
        features = self.text_tower(ids)
        return F.normalize(features, dim=-1) if normalize else features

    # The same logits and open_clip triple as the PyTorch model: they only use encode_* and the temperature.
    get_logits = CLIP.get_logits
    forward = CLIP.forward


def manifest_record(manifest: dict[str, Any], source: Path) -> ModelRecord:
    """The model record a manifest holds (older manifests: the config and the normalisation only)."""
    if "record" in manifest:
        record = ModelRecord.from_dict(manifest["record"], str(source))
        if record.tokenizer.path == BUNDLED_TOKENIZER:  # the tokenizer files lie next to the graphs
            record.tokenizer.path = str(Path(source).parent)
        return record
    pre = manifest.get("preprocess") or {}
    return ModelRecord.default(ModelConfig.from_dict(manifest["config"], str(source)),
                               preprocess=PreprocessConfig.from_dict(pre, str(source)))


def ensure_precision(folder: Path, manifest: dict[str, Any], precision: str) -> dict[str, Path]:
    """Paths of the ``image``/``text`` graphs for ``precision``; int8 graphs are quantised on first use
    (next to the float32 ones, or in the cache when the export folder is read-only).

    A Hugging Face text tower stays float32 under ``"int8"``: dynamically quantised, the packaged MiniLM
    encoder drifts to a cosine similarity of about 0.98 to its float32 features, below the 0.999 bound
    that image towers and CLIP text towers meet. The int8 file names carry the weight type
    (``image_encoder.int8-s8.onnx``), which depends on the CPU.
    """
    fp32 = {k: folder / v for k, v in manifest["files"]["fp32"].items()}
    for path in fp32.values():
        if not path.is_file():
            raise KontrastError(f"{path}: missing from the ONNX export; re-export with 'kontrast export MODEL --onnx DIR'")
    if precision == "fp32":
        return fp32
    from .quantize import int8_scheme, quantize_onnx_int8

    scheme = int8_scheme()
    suffix = INT8_SUFFIX.format(scheme=scheme)
    out: dict[str, Path] = {}
    for tower, src in fp32.items():
        if tower == "text" and manifest.get("text_truncation") == "padding":
            out[tower] = src  # a Hugging Face text tower: float32 (see above)
            continue
        candidates = [folder / (src.stem + suffix), cache_root() / manifest["fingerprint"] / (src.stem + suffix)]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            target = candidates[0] if os.access(folder, os.W_OK) else candidates[1]
            target.parent.mkdir(parents=True, exist_ok=True)
            found = quantize_onnx_int8(src, target, float_blocks=TEXT_FLOAT_BLOCKS if tower == "text" else (),
                                       scheme=scheme)
        out[tower] = found
    return out


def _export_folder(path: Path) -> Path | None:
    """The export folder ``path`` names (the folder itself or one of its files), else None."""
    folder = path if path.is_dir() else path.parent
    return folder if (folder / MANIFEST).is_file() else None


def load_onnx(
    name_or_path: str | os.PathLike,
    precision: str = "fp32",
    threads: int | None = None,
    **load_kwargs: Any,
) -> tuple[OnnxCLIP, Callable, Callable]:
    """``(model, preprocess, tokenizer)`` with the towers in onnxruntime (see the module docstring).

    ``load_kwargs`` (``pretrained``, ``image_size``, ``quick_gelu``, ``cache_dir``) go to ``kontrast.load``
    when the model has to be loaded and exported first.
    """
    if precision not in ONNX_PRECISIONS:
        raise KontrastError(f"precision {precision!r} is not available with backend='onnx'; use one of "
                            f"{', '.join(ONNX_PRECISIONS)} (or backend='torch' for bf16/fp16)")
    path = Path(os.fspath(name_or_path)).expanduser()
    folder = _export_folder(path) if path.exists() else None
    if folder is None:
        if path.suffix == ".onnx":
            raise KontrastError(f"{path}: an .onnx file needs its export folder with {MANIFEST}; create one with "
                                "'kontrast export MODEL --onnx DIR'")
        folder = export_cached(name_or_path, **load_kwargs)
    try:
        model = OnnxCLIP(folder, precision=precision, threads=threads)
    finally:
        if folder.name.startswith(TEMP_PREFIX):  # random weights: nothing worth caching
            shutil.rmtree(folder, ignore_errors=True)
    return model, build_preprocess(model.record), build_tokenizer(model.record)


def export_cached(name_or_path: str | os.PathLike, **load_kwargs: Any) -> Path:
    """Load a model with PyTorch and export it once to ``cache_root()/<fingerprint>``; returns that folder.

    A randomly initialised model (an architecture name without weights) goes to a temporary folder
    instead (``TEMP_PREFIX``), which ``load_onnx`` removes once the sessions are built.
    """
    from ..api import load

    torch_model, _, _ = load(name_or_path, precision="fp32", **load_kwargs)
    return export_model_cached(torch_model)


def export_model_cached(torch_model: CLIP, preprocess: Any = None) -> Path:
    """``export_cached`` for a model already loaded in PyTorch (the export is keyed by its fingerprint).
    ``preprocess`` (if given) replaces the record's preprocessing (and so takes part in the fingerprint)."""
    from ..record import fingerprint, record_for_writing

    if preprocess is not None:
        import copy

        view = copy.copy(torch_model)  # the same weights, with the record to export
        view.record = record_for_writing(torch_model, preprocess)
        torch_model = view
    if getattr(torch_model, "checkpoint_path", None) is None:
        temporary = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
        try:
            return export_onnx(torch_model, temporary)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
    folder = cache_root() / fingerprint(torch_model)
    if (folder / MANIFEST).is_file():
        return folder
    partial = folder.with_name(folder.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        export_onnx(torch_model, partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # no half-written export left behind
        raise
    try:
        os.replace(partial, folder)  # atomic: another process never sees a half-written export
    except OSError:  # another process finished the same export first
        shutil.rmtree(partial, ignore_errors=True)
        if not (folder / MANIFEST).is_file():
            raise
    log.info("ONNX export cached in %s", folder)
    return folder
