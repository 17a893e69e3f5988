"""Many models x many datasets (x languages) in one run, resumable, with CLIP_benchmark result files.

```python
from kontrast.evaluate.suite import DatasetSpec, ModelSpec, plan, run_suite
runs = plan([ModelSpec("default"), ModelSpec("ViT-B-32", "openai")],
            [DatasetSpec("benchmarks/wds_cifar10"), DatasetSpec("captions.csv", task="retrieval")])
outcome = run_suite(runs, "results/")
```
Every run writes CLIP_benchmark's JSON (``cb_results``) as ``OUT/<name>.json`` and kontrast's own
``results.json`` / ``results.md`` / plots into ``OUT/<name>/`` (``OUT/`` itself with ``single=True``).
A run whose files exist with the same *run key* (model, weights file, dataset, task, options, language)
is skipped, so a suite that was stopped resumes at the first unfinished run; image features are cached
by model fingerprint (and saved shard by shard, see ``features``), so an interrupted run resumes too.
Models load one at a time, only when one of their runs is not done. A run that fails with a user
error (``KontrastError``) is reported and the suite goes on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import KontrastError
from . import cb_layout
from . import cb_results as cbr
from .options import OPTIONS_OF_TASK, RECALL_KS, Data, RunOptions
from .report import RESULTS_JSON, write_results
from .runner import CB_TASK_NAMES, evaluate, normalise_task

logger = logging.getLogger(__name__)

Event = Callable[[str, "Run", dict[str, Any] | None], None]  # (what, run, record): start | done | skip | fail


@dataclass(frozen=True)
class ModelSpec:
    """A model as ``kontrast.load`` takes it: a name or path, and an optional pretrained tag."""

    name: str
    pretrained: str | None = None

    @classmethod
    def parse(cls, text: str, pretrained: str | None = None) -> ModelSpec:
        """``NAME``, or ``NAME,PRETRAINED`` as in ``clip_benchmark --pretrained_model`` (unless NAME,... is a path)."""
        if "," in text and not os.path.exists(text):
            name, tag = text.split(",", 1)
            return cls(name.strip(), tag.strip() or None)
        return cls(text, pretrained)

    def cb_fields(self) -> tuple[str, str]:
        """``(model, pretrained)`` for CLIP_benchmark's files: a checkpoint path is the ``pretrained``."""
        if self.pretrained:
            return self.name, self.pretrained
        if os.path.exists(os.path.expanduser(self.name)):
            return "kontrast", self.name
        return self.name, ""

    def weights_stat(self) -> list[tuple[str, int, int]]:
        """Size and mtime of the checkpoint file(s), so new weights at the same path are a new run."""
        path = Path(os.path.expanduser(self.name))
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
        return [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset and how to evaluate on it: the task (``auto``: from ``dataset_type.txt``), a name for
    CLIP_benchmark's files, and the task's options fields (``split``, ``label_field``, ``templates``...)."""

    data: Data
    task: str = "auto"
    name: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def is_clip_benchmark(self) -> bool:
        return isinstance(self.data, (str, os.PathLike)) and cb_layout.is_clip_benchmark_dir(self.data)

    def resolved_task(self) -> str:
        if self.task != "auto":
            return normalise_task(self.task)
        if self.is_clip_benchmark:
            return cb_layout.task_of(self.data)
        raise KontrastError(
            f"--task auto needs a CLIP_benchmark dataset folder (with dataset_type.txt or */nshards.txt); "
            f"{_first(self.data)} is not one: pass --task zeroshot, retrieval or linear-probe"
        )

    def cb_name(self) -> str:
        """The ``dataset`` of CLIP_benchmark's files: ``wds/<folder>`` (``wds_`` prefix dropped) or the file stem."""
        if self.name:
            return self.name
        base = Path(os.fspath(_first(self.data)).rstrip("/")).name
        if self.is_clip_benchmark:
            return "wds/" + (base.removeprefix("wds_"))
        return re.sub(r"\.(tar|csv|tgz|tar\.gz)$", "", base) or "data"


@dataclass(frozen=True)
class Run:
    """One (model, dataset, task, language) evaluation."""

    model: ModelSpec
    dataset: DatasetSpec
    task: str
    language: str = "en"

    def options(self, recall_k: Sequence[int] = RECALL_KS) -> Any:
        """The task's options object from the dataset's fields (+ language, recall@k)."""
        fields = dict(self.dataset.options)
        klass = OPTIONS_OF_TASK[self.task]
        names = {f.name for f in dataclasses.fields(klass)}
        if "language" in names:
            fields["language"] = self.language
        if "recall_k" in names:
            fields.setdefault("recall_k", tuple(recall_k))
        unknown = sorted(set(fields) - names)
        if unknown:
            raise KontrastError(
                f"{unknown[0]!r} is not an option of task {self.task} (its options: {', '.join(sorted(names))})"
            )
        return klass(**fields)

    def name(self) -> str:
        """The CLIP_benchmark file name of this run, without ``.json``."""
        model, pretrained = self.model.cb_fields()
        return cbr.result_name(self.dataset.cb_name(), model, pretrained, self.language, CB_TASK_NAMES[self.task])[:-5]

    def key(self, recall_k: Sequence[int] = RECALL_KS) -> str:
        """What makes two runs the same: model and weights file, data, task, options, language."""
        options = dataclasses.asdict(self.options(recall_k))
        payload = {
            "model": [self.model.name, self.model.pretrained, self.model.weights_stat()],
            "data": [os.fspath(d) for d in ([self.dataset.data] if isinstance(self.dataset.data, (str, os.PathLike)) else self.dataset.data)],
            "task": self.task,
            "language": self.language,
            "options": options,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _first(data: Data) -> str | os.PathLike:
    return data if isinstance(data, (str, os.PathLike)) else data[0]


def plan(
    models: Sequence[ModelSpec], datasets: Sequence[DatasetSpec], languages: Sequence[str] = ("en",)
) -> list[Run]:
    """Every (model, dataset, language) run, model by model.

    Languages pick the class names of CLIP_benchmark classification folders: each folder runs in the
    requested languages it has names for (all requested ones if it has none of them, which then fail
    naming the missing file). Retrieval folders and other datasets run once, in ``en`` (or the first
    language asked for): their captions and labels have one language.
    """
    runs = []
    for model in models:
        for ds in datasets:
            task = ds.resolved_task()
            langs = ["en" if "en" in languages else languages[0]]
            if ds.is_clip_benchmark and task != "retrieval":
                have = cb_layout.languages(ds.data)
                langs = [lang for lang in languages if lang in have] or list(languages)
            runs.extend(Run(model, ds, task, lang) for lang in langs)
    names: dict[str, Run] = {}
    for run in runs:
        other = names.setdefault(run.name(), run)
        if other is not run:
            raise KontrastError(
                f"two runs would write {run.name()}.json ({other.model.name} on {_first(other.dataset.data)} and "
                f"{run.model.name} on {_first(run.dataset.data)}); rename one checkpoint file or dataset folder"
            )
    return runs


@dataclass
class Outcome:
    """What a suite did: records of the runs done now, names of those skipped, errors of those failed."""

    done: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run name, one-line error)


def run_dir(run: Run, out_dir: Path, single: bool) -> Path:
    """Where a run's kontrast files go: ``OUT`` for a single run, else ``OUT/<run name>``."""
    return out_dir if single else out_dir / run.name()


def is_done(run: Run, out_dir: Path, single: bool, recall_k: Sequence[int] = RECALL_KS) -> bool:
    """A run is done when its files exist and its recorded run key is this run's."""
    record_path = run_dir(run, out_dir, single) / RESULTS_JSON
    if run.task != "linear-probe" and not (out_dir / f"{run.name()}.json").is_file():
        return False
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("run_key") == run.key(recall_k)


def _write_cb(run: Run, record: dict[str, Any], out_dir: Path) -> None:
    cb = record.get("clip_benchmark")
    if cb is None:  # linear probes: CLIP_benchmark's probe is another algorithm; no file in its name
        return
    model, pretrained = run.model.cb_fields()
    data = cbr.result_record(run.dataset.cb_name(), model, pretrained, cb["task"], cb["metrics"], run.language)
    cbr.write_result(data, out_dir / f"{run.name()}.json")


def run_suite(
    runs: Sequence[Run],
    out_dir: str | os.PathLike,
    run_options: RunOptions | None = None,
    *,
    recall_k: Sequence[int] = RECALL_KS,
    overwrite: bool = False,
    single: bool = False,
    on_event: Event | None = None,
    load: Callable[..., tuple[Any, Callable, Callable]] | None = None,
) -> Outcome:
    """Run every run not done yet (all with ``overwrite``); see the module docstring for the layout.

    ``load(name, pretrained=...)`` gives ``(model, preprocess, tokenizer)`` (default ``kontrast.load``).
    ``on_event(what, run, record)`` reports progress: ``skip``, ``start``, ``done`` (with the record), ``fail``.
    """
    if load is None:
        from ..api import load
    out = Path(out_dir)
    outcome = Outcome()
    emit = on_event or (lambda *_: None)
    current: ModelSpec | None = None
    loaded: tuple[Any, Callable, Callable] | KontrastError | None = None
    for run in runs:
        if not overwrite and is_done(run, out, single, recall_k):
            outcome.skipped.append(run.name())
            emit("skip", run, None)
            continue
        emit("start", run, None)
        try:
            if current != run.model:
                current, loaded = run.model, None  # free the previous model before loading the next
                try:
                    loaded = load(run.model.name, pretrained=run.model.pretrained)
                except KontrastError as exc:
                    loaded = exc
            if isinstance(loaded, KontrastError):
                raise loaded
            model, preprocess, tokenizer = loaded
            record = evaluate(
                run.task,
                model,
                run.dataset.data,
                run.options(recall_k),
                preprocess=preprocess,
                tokenizer=tokenizer,
                model_name=run.model.name + (f" ({run.model.pretrained})" if run.model.pretrained else ""),
                run=run_options,
                out_dir=run_dir(run, out, single),
            )
        except KontrastError as exc:
            outcome.failed.append((run.name(), str(exc)))
            emit("fail", run, {"error": str(exc)})
            continue
        record["run_key"] = run.key(recall_k)  # written last: the run counts as done only from here
        record["language"] = run.language
        _write_cb(run, record, out)
        write_results(record, run_dir(run, out, single))
        outcome.done.append(record)
        emit("done", run, record)
    return outcome


# ---- a small benchmark file ---------------------------------------------------------------------------
BENCHMARK_KEYS = ("models", "datasets", "languages", "recall_k")


def _closest(name: str, known: Sequence[str]) -> str:
    import difflib

    match = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def read_benchmark(path: str | os.PathLike) -> tuple[list[ModelSpec], list[DatasetSpec], list[str], tuple[int, ...]]:
    """``(models, datasets, languages, recall_k)`` from a YAML (or JSON) benchmark file::

        models: [default, "ViT-B-32,openai", {model: runs/x/checkpoint.pt}]
        datasets:
          - benchmarks/wds_cifar10                       # a CLIP_benchmark folder: task from dataset_type.txt
          - {data: captions.csv, task: retrieval, name: my-captions}
          - {data: "emoji/*.tar", task: zeroshot, label_field: name, templates: "an emoji of a {}."}
        languages: [en, de]                              # optional
        recall_k: [1, 5, 10]                             # optional

    A dataset entry takes ``data``, ``task``, ``name`` and the fields of its task's options object.
    Relative paths are relative to the file. Any other key is an error naming it.
    """
    import yaml

    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise KontrastError(f"cannot read benchmark file {path}: {' '.join(str(exc).split())}") from None
    if not isinstance(spec, dict):
        raise KontrastError(f"{path}: expected a mapping with {', '.join(BENCHMARK_KEYS)}")
    for key in spec:
        if key not in BENCHMARK_KEYS:
            raise KontrastError(f"{path}: unknown key {key!r}{_closest(str(key), BENCHMARK_KEYS)}; keys: {', '.join(BENCHMARK_KEYS)}")
    if not spec.get("models") or not spec.get("datasets"):
        raise KontrastError(f"{path}: needs a 'models' list and a 'datasets' list")
    base = path.parent

    def local(p: str) -> str:
        candidate = base / os.path.expanduser(p)
        return str(candidate) if not os.path.isabs(os.path.expanduser(p)) and (candidate.exists() or "*" in p) else p

    models = []
    for item in spec["models"]:
        if isinstance(item, dict):
            extra = set(item) - {"model", "pretrained"}
            if "model" not in item or extra:
                raise KontrastError(f"{path}: a model entry takes 'model' and 'pretrained' (got {sorted(item)})")
            models.append(ModelSpec(local(str(item["model"])), item.get("pretrained")))
        else:
            models.append(ModelSpec.parse(local(str(item))))
    datasets = []
    for item in spec["datasets"]:
        entry = {"data": item} if not isinstance(item, dict) else dict(item)
        if "data" not in entry:
            raise KontrastError(f"{path}: dataset entry {item!r} has no 'data'")
        data = entry.pop("data")
        data = [local(str(d)) for d in data] if isinstance(data, list) else local(str(data))
        ds = DatasetSpec(data, str(entry.pop("task", "auto")), entry.pop("name", None), entry)
        fields = {f.name for f in dataclasses.fields(OPTIONS_OF_TASK[ds.resolved_task()])} - {"language", "recall_k"}
        for key in entry:
            if key not in fields:
                raise KontrastError(
                    f"{path}: dataset {data!r}: {key!r} is not an option of task {ds.resolved_task()}"
                    f"{_closest(key, sorted(fields))}; options: data, task, name, {', '.join(sorted(fields))}"
                )
        datasets.append(ds)
    languages = [str(x) for x in spec.get("languages") or ["en"]]
    recall_k = tuple(int(k) for k in spec.get("recall_k") or RECALL_KS)
    return models, datasets, languages, recall_k
