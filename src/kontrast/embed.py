"""Embedding whole collections to disk: one set of files per work unit, resumable, rank-parallel.

Layout of an output folder (``unit-000007`` is the 8th unit of the source: a shard, or 256 files)::

    manifest.json               model fingerprint, source, dtype, dim, units done, counts, kontrast version
    unit-000007.npy             image embeddings [n, D] (L2-normalised, float16 or float32)
    unit-000007.text.npy        caption embeddings [n, D] (with --text; zero rows where a record has no caption)
    unit-000007.parquet         metadata, one row per embedding: key, source, caption, width, height, meta (JSON)
                                (``.csv`` when pyarrow is not installed)
    unit-000007.skipped.jsonl   records that could not be embedded: key, source, reason
    unit-000007.done.json       written last: the unit is complete (rows, skipped, captions_skipped)
    skipped.jsonl               all skipped records in unit order (written when the job completes); a record
                                embedded without its caption (not UTF-8, unreadable) has ``"part": "caption"``

``layout="clip-retrieval"`` (``kontrast embed --layout clip-retrieval``) writes the embeddings and metadata in
the layout of ``clip-retrieval inference`` instead (``img_emb/img_emb_7.npy``, ``text_emb/``, ``metadata/``;
see ``embed_clip_retrieval``), with the manifest at the top and the markers and skipped lists in ``units/``.

A unit that could not be read whole (a damaged shard: corrupt headers, cut short; see ``data.sources``)
gets no files and no ``done.json``: the run reports what was lost (``EmbedReport.damaged``), the job stays
incomplete, and a rerun reads the unit again (after the shard is repaired, completely).

Every file is written to a temporary name and moved into place (``os.replace``), and a unit counts as
done only once its ``done.json`` exists, so a job killed at any moment resumes with no duplicate and
no missing row: re-run it with the same arguments and it redoes only the units without a marker.
Under ``torchrun`` each rank embeds ``split_units(units, rank, world_size)``; the unit files are the
same as a single process writes, and rank 0 writes the final manifest after a barrier.
"""

from __future__ import annotations

import csv
import datetime
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import embed_clip_retrieval as cr
from .data.sources import CsvSource, FolderSource, Source, expand_paths, open_source, split_units
from .errors import KontrastError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "kontrast-embeddings"
DTYPES = ("float16", "float32")
META_COLUMNS = ("key", "source", "caption", "width", "height", "meta")


# ---- small file helpers -----------------------------------------------------------------------------
def unit_stem(index: int) -> str:
    return f"unit-{index:06d}"


def _tmp(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def _atomic_npy(path: Path, array: np.ndarray) -> None:
    tmp = _tmp(path)
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def _atomic_text(path: Path, text: str) -> None:
    tmp = _tmp(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _has_pyarrow() -> bool:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


def _meta_rows(metas: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"key": m["key"], "source": m["source"], "caption": m.get("caption"), "width": int(m["width"]),
             "height": int(m["height"]), "meta": json.dumps(m.get("meta") or {}, ensure_ascii=False, sort_keys=True)}
            for m in metas]


def _write_metadata(path: Path, metas: Sequence[dict[str, Any]]) -> None:
    rows = _meta_rows(metas)
    tmp = _tmp(path)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([("key", pa.string()), ("source", pa.string()), ("caption", pa.string()),
                            ("width", pa.int32()), ("height", pa.int32()), ("meta", pa.string())])
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
    else:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=META_COLUMNS)
            writer.writeheader()
            writer.writerows({**r, "caption": "" if r["caption"] is None else r["caption"]} for r in rows)
    os.replace(tmp, path)


def _read_metadata(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    else:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [{**r, "caption": r["caption"] or None, "width": int(r["width"]), "height": int(r["height"])}
                    for r in csv.DictReader(f)]
    for r in rows:
        r["meta"] = json.loads(r["meta"]) if r.get("meta") else {}
    return rows


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KontrastError(f"cannot read {path}: {exc}; remove the file or use another --out folder") from exc


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ---- distributed ------------------------------------------------------------------------------------
def dist_env() -> tuple[int, int]:
    """``(rank, world_size)`` from torchrun's environment (``RANK``, ``WORLD_SIZE``); ``(0, 1)`` otherwise."""
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as exc:
        raise KontrastError(f"RANK/WORLD_SIZE must be integers ({exc})") from exc


def make_barrier(world_size: int, timeout_hours: float = 24.0) -> Callable[[], None] | None:
    """A barrier across the ranks of a ``torchrun`` job (gloo, initialised here if no group exists yet).

    Returns ``None`` for a single process. The timeout is long because ranks may finish far apart.
    """
    if world_size <= 1:
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=timeout_hours))
    group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
    return lambda: dist.barrier(group=group)


# ---- the job ----------------------------------------------------------------------------------------
@dataclass
class EmbedReport:
    """What one call did, and the state of the folder afterwards."""

    out_dir: Path
    units_total: int
    units_done: int  # in the whole folder, after this run (as seen by this rank)
    units_run: int  # embedded by this rank in this run
    rows: int  # embedded by this rank in this run
    skipped: int  # skipped by this rank in this run
    complete: bool = False
    skipped_items: list[dict[str, str]] = field(default_factory=list)
    captions_skipped: int = 0  # images embedded without their caption (by this rank in this run)
    damaged: list[dict[str, str]] = field(default_factory=list)  # parts of units that could not be read


class EmbedJob:
    """Embed a source into ``out_dir``: ``prepare()``, then ``run(progress)``, then ``finish()``.

    ``prepare`` checks an existing manifest (same model fingerprint, source, dtype and text flag,
    else a one-line ``KontrastError``), writes the manifest on rank 0, and lists this rank's units
    that are not done yet. ``run`` embeds them unit by unit. ``finish`` waits for every rank
    (``barrier``) and, on rank 0, merges the skipped lists and completes the manifest.
    """

    def __init__(self, model: torch.nn.Module, preprocess: Callable, source: str | os.PathLike | Sequence[str],
                 out_dir: str | os.PathLike, *, tokenizer: Callable | None = None, model_name: str | None = None,
                 batch_size: int = 64, workers: int = 0, dtype: str = "float16", rank: int = 0, world_size: int = 1,
                 barrier: Callable[[], None] | None = None, follow_symlinks: bool = False,
                 layout: str = "kontrast", pretrained: str | None = None) -> None:
        if layout not in cr.LAYOUTS:
            raise KontrastError(f"layout {layout!r} is not one of: {', '.join(cr.LAYOUTS)}")
        if layout == "clip-retrieval":
            cr.require_pyarrow()
        if dtype not in DTYPES:
            raise KontrastError(f"dtype {dtype!r} is not one of: {', '.join(DTYPES)}")
        if batch_size < 1 or workers < 0:
            raise KontrastError(f"batch_size must be >= 1 and workers >= 0 (got {batch_size}, {workers})")
        if not 0 <= rank < world_size:
            raise KontrastError(f"rank {rank} is not in 0..{world_size - 1}")
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
        self.out = Path(out_dir).expanduser()
        self.spec = [os.fspath(source)] if isinstance(source, (str, os.PathLike)) else [os.fspath(s) for s in source]
        self.model_name = model_name or getattr(model, "checkpoint_path", None) or model.config.name
        self.pretrained = pretrained  # the --pretrained tag of an architecture name (recorded for 'index')
        self.layout = layout
        self.marks = self.out if layout == "kontrast" else self.out / "units"  # done markers, skipped lists
        self.batch_size, self.workers, self.dtype = batch_size, workers, dtype
        self.rank, self.world_size, self.barrier = rank, world_size, barrier
        self.follow_symlinks = follow_symlinks  # read symlinks leading out of a folder source (data.sources)
        self.source: Source | None = None
        self.units: list[Any] = []
        self.pending: list[int] = []  # global unit indices this rank still has to embed
        self.manifest: dict[str, Any] = {}

    # -- preparation --
    def prepare(self) -> None:
        from . import __version__
        from .record import fingerprint

        paths = [os.path.abspath(p) for p in expand_paths(self.spec)]
        self.source = open_source(paths, follow_symlinks=self.follow_symlinks)
        self.units = list(self.source.units())
        if not self.units:
            raise KontrastError(f"no images found in {' '.join(self.spec)} (looked for .png .jpg .jpeg .webp ...)")
        names = [self.source.unit_name(u) for u in self.units]
        self.manifest = {
            "format": FORMAT, "version": 1, "kontrast_version": __version__, "status": "running",
            "model": {"name": str(self.model_name), "fingerprint": fingerprint(self.model),
                      "architecture": self.model.config.name, "pretrained": self.pretrained},
            "layout": self.layout,
            "source": {"spec": self.spec, "paths": paths, "kind": self.source.kind, "units": names},
            "dtype": self.dtype, "dim": int(self.model.embed_dim), "normalized": True,
            "text": self.tokenizer is not None,
            "metadata_format": "parquet" if _has_pyarrow() else "csv", "units_total": len(self.units),
            "units_done": 0, "rows": 0, "skipped": 0, "world_size": self.world_size, "created": _now(),
        }
        path = self.out / MANIFEST
        if path.is_file():
            self._check_resume(_read_json(path))
        elif self.out.is_dir() and (any(self.out.glob("unit-*")) or (self.out / "img_emb").is_dir()):
            raise KontrastError(f"{self.out} holds unit files but no {MANIFEST}; use an empty or new --out folder")
        mine = split_units(list(range(len(self.units))), self.rank, self.world_size)
        self.pending = [i for i in mine if not self._done(i).is_file()]
        self.marks.mkdir(parents=True, exist_ok=True)
        for i in self.pending:  # leftovers of a killed run: half-written temporary files of our units
            stale = list(self.marks.glob(f"{unit_stem(i)}.*.tmp-*"))
            if self.layout == "clip-retrieval":
                stale += cr.stale_files(self.out, i, len(self.units))
            for path in stale:
                path.unlink(missing_ok=True)
        if self.rank == 0:
            _atomic_text(path, json.dumps(self.manifest, indent=2, ensure_ascii=False))

    def _check_resume(self, old: dict[str, Any]) -> None:
        new = self.manifest
        if old.get("format") != FORMAT:
            raise KontrastError(f"{self.out / MANIFEST} is not a kontrast embeddings manifest; "
                                "use another --out folder")
        fp_old, fp_new = old.get("model", {}).get("fingerprint"), new["model"]["fingerprint"]
        if fp_old != fp_new:
            raise KontrastError(f"{self.out} was embedded with another model (fingerprint {fp_old}, "
                                f"{old.get('model', {}).get('name')}); this model is {fp_new}: "
                                "use the same --model or a new --out")
        if old.get("source", {}).get("paths") != new["source"]["paths"]:
            old_spec = " ".join(old.get("source", {}).get("spec", []))
            raise KontrastError(f"{self.out} was embedded from another source ({old_spec}); "
                                "use the same SOURCE or a new --out")
        if old.get("source", {}).get("units") != new["source"]["units"]:
            n_old = len(old["source"].get("units", []))
            raise KontrastError(f"the files in {' '.join(self.spec)} changed since {self.out} was started "
                                f"({n_old} units then, {len(self.units)} now); use a new --out")
        for key, flag in (("dtype", "--dtype"), ("text", "--text"), ("layout", "--layout")):
            if old.get(key, "kontrast" if key == "layout" else None) != new[key]:
                raise KontrastError(f"{self.out} was started with {flag} {old.get(key)} (now {new[key]}); "
                                    "rerun with the same arguments or use a new --out")
        new["metadata_format"] = old.get("metadata_format", new["metadata_format"])
        new["created"] = old.get("created", new["created"])

    def expected_images(self) -> int | None:
        """Number of records in this rank's pending units, where the source knows it without reading."""
        if isinstance(self.source, FolderSource | CsvSource):
            return sum(hi - lo for lo, hi in (self.units[i] for i in self.pending))
        return None

    # -- embedding --
    def run(self, progress: Callable[[int], None] | None = None) -> EmbedReport:
        """Embed this rank's pending units; ``progress(n)`` gets the number of images after each batch."""
        from .pipeline import embed_units

        if self.source is None:
            self.prepare()
        report = EmbedReport(self.out, len(self.units), 0, 0, 0, 0)
        if self.pending:
            units = [self.units[i] for i in self.pending]
            was_training = self.model.training
            self.model.eval()
            try:
                for result in embed_units(self.model, self.preprocess, self.source, units=units,
                                          batch_size=self.batch_size, workers=self.workers,
                                          tokenizer=self.tokenizer, normalize=True, progress=progress):
                    index = self.pending[result.index]
                    if result.damaged:  # not written, not done: a rerun reads it again
                        report.damaged.extend({"unit": self.source.unit_name(result.unit), "source": d.source,
                                               "reason": d.reason} for d in result.damaged)
                        continue
                    self._write_unit(index, result)
                    report.units_run += 1
                    report.rows += len(result.metas)
                    report.skipped += len(result.skipped)
                    report.captions_skipped += len(result.caption_errors)
            finally:
                self.model.train(was_training)
        report.units_done = self.count_done()
        return report

    def _done(self, index: int) -> Path:
        return self.marks / f"{unit_stem(index)}.done.json"

    def _write_unit(self, index: int, result) -> None:
        stem = self.marks / unit_stem(index)
        np_dtype = np.dtype(self.dtype)
        if self.layout == "clip-retrieval":
            cr.write_unit(self.out, index, len(self.units), result, np_dtype, self.tokenizer is not None, _tmp)
        else:
            _atomic_npy(stem.with_name(f"{stem.name}.npy"), result.image_embeddings.astype(np_dtype))
            if self.tokenizer is not None:
                _atomic_npy(stem.with_name(f"{stem.name}.text.npy"), result.text_embeddings.astype(np_dtype))
            ext = "parquet" if self.manifest["metadata_format"] == "parquet" else "csv"
            _write_metadata(stem.with_name(f"{stem.name}.{ext}"), result.metas)
        lines = [{"key": s.key, "source": s.source, "reason": s.reason} for s in result.skipped]
        lines += [{"key": s.key, "source": s.source, "reason": s.reason, "part": "caption"}
                  for s in result.caption_errors]
        _atomic_text(stem.with_name(f"{stem.name}.skipped.jsonl"),
                     "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))
        done = {"unit": self.source.unit_name(result.unit), "rows": len(result.metas), "skipped": len(result.skipped),
                "captions_skipped": len(result.caption_errors), "rank": self.rank, "finished": _now()}
        _atomic_text(stem.with_name(f"{stem.name}.done.json"), json.dumps(done))  # last: the unit is complete

    def count_done(self) -> int:
        return sum(self._done(i).is_file() for i in range(len(self.units)))

    # -- completion --
    def finish(self, report: EmbedReport) -> EmbedReport:
        """Wait for all ranks; on rank 0 merge ``skipped.jsonl`` and write the final manifest."""
        if self.barrier is not None:
            self.barrier()
        report.units_done = self.count_done()
        report.complete = report.units_done == len(self.units)
        if self.rank != 0:
            return report
        rows = skipped = captions = 0
        lines: list[str] = []
        for i in range(len(self.units)):
            marker = self._done(i)
            if not marker.is_file():
                continue
            done = _read_json(marker)
            rows += int(done["rows"])
            skipped += int(done["skipped"])
            captions += int(done.get("captions_skipped", 0))
            lines.append((self.marks / f"{unit_stem(i)}.skipped.jsonl").read_text(encoding="utf-8"))
        if report.complete:
            _atomic_text(self.out / "skipped.jsonl", "".join(lines))
            report.skipped_items = [json.loads(x) for x in "".join(lines).splitlines() if x.strip()]
        self.manifest.update(status="complete" if report.complete else "incomplete", units_done=report.units_done,
                             rows=rows, skipped=skipped, captions_skipped=captions, updated=_now())
        _atomic_text(self.out / MANIFEST, json.dumps(self.manifest, indent=2, ensure_ascii=False))
        return report


def embed_collection(model: torch.nn.Module, preprocess: Callable, source: str | os.PathLike | Sequence[str],
                     out_dir: str | os.PathLike, progress: Callable[[int], None] | None = None,
                     **kwargs: Any) -> EmbedReport:
    """Embed ``source`` into ``out_dir`` in one call (see ``EmbedJob`` for the arguments)."""
    job = EmbedJob(model, preprocess, source, out_dir, **kwargs)
    job.prepare()
    return job.finish(job.run(progress))


# ---- reading ----------------------------------------------------------------------------------------
def load_manifest(out_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(out_dir).expanduser() / MANIFEST
    if not path.is_file():
        raise KontrastError(f"{path} not found: is {out_dir} a folder written by 'kontrast embed'?")
    return _read_json(path)


def load_embeddings(out_dir: str | os.PathLike, text: bool = False, dtype: Any = np.float32,
                    allow_partial: bool = False) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """``(embeddings [N, D], metas)`` of a ``kontrast embed`` folder, units concatenated in unit order.

    ``text=True`` reads the caption embeddings instead. ``metas`` are dicts with key, source, caption,
    width, height and meta (a dict). An unfinished folder raises ``KontrastError`` unless
    ``allow_partial`` (then the finished units are returned).
    """
    out = Path(out_dir).expanduser()
    manifest = load_manifest(out)
    if manifest.get("layout", "kontrast") != "kontrast":
        raise KontrastError(f"{out} is in {manifest['layout']}'s layout; read it with "
                            "kontrast.search.embedding_sources.iter_embedding_shards")
    if text and not manifest.get("text"):
        raise KontrastError(f"{out} has no caption embeddings; run kontrast embed with --text")
    total = int(manifest["units_total"])
    done = [i for i in range(total) if (out / f"{unit_stem(i)}.done.json").is_file()]
    if len(done) < total and not allow_partial:
        raise KontrastError(f"{out} is incomplete ({len(done)} of {total} units); "
                            "rerun kontrast embed with the same arguments")
    arrays, metas = [], []
    suffix = ".text.npy" if text else ".npy"
    for i in done:
        stem = unit_stem(i)
        arrays.append(np.load(out / f"{stem}{suffix}", allow_pickle=False).astype(dtype, copy=False))
        meta_path = out / f"{stem}.parquet"
        metas.extend(_read_metadata(meta_path if meta_path.is_file() else out / f"{stem}.csv"))
    emb = np.concatenate(arrays) if arrays else np.zeros((0, int(manifest["dim"])), dtype)
    return emb, metas
