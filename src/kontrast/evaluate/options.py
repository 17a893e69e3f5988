"""Small options objects for ``kontrast.evaluate``: one per task, plus the feature / run settings they share.

``evaluate(task, model, data, options)`` takes the options object of its task; fields that only make
sense for one task live only in that task's object, so a zero-shot call cannot be given a caption field
or a k-shot list by mistake.

```python
from kontrast.evaluate import RunOptions, ZeroShotOptions, evaluate
evaluate("zeroshot", model, "data/", ZeroShotOptions(templates="a photo of a {}."),
         run=RunOptions(cache_dir="cache", workers=2))
```
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import KontrastError

Data = str | os.PathLike | Sequence[str | os.PathLike]
Progress = Callable[[str, int], None]

TASKS = ("zeroshot", "retrieval", "linear-probe")
#: CLIP_benchmark's task names for kontrast's (its result files use these).
CB_TASK_NAMES = {"zeroshot": "zeroshot_classification", "retrieval": "zeroshot_retrieval", "linear-probe": "linear_probe"}
K_SHOTS = (1, 2, 4, 8, 16)  # linear-probe k-shot sizes
RECALL_KS = (1, 5, 10)  # retrieval recall@k


@dataclass(frozen=True)
class RunOptions:
    """How features are computed and cached; shared by every task."""

    cache_dir: str | os.PathLike | None = None  # feature cache (default: $KONTRAST_CACHE/features)
    use_cache: bool = True  # False: recompute everything and write no cache
    batch_size: int = 64  # images per forward pass
    workers: int = 0  # DataLoader worker processes that decode images
    progress: Progress | None = None  # progress(stage, n): images / prompts / captions embedded
    long_text: str = "truncate"  # texts over the context: cut (and warn) or "average" overlapping windows


@dataclass(frozen=True)
class ZeroShotOptions:
    """Zero-shot classification (single-label accuracy, or mAP on a multi-label CLIP_benchmark set)."""

    split: str | None = None  # part of a dataset folder (CLIP_benchmark folders: default "test")
    label_field: str | None = None  # json field / CSV column with the class
    classnames: str | os.PathLike | None = None  # file with the class list
    templates: str | Sequence[str] | None = None  # set name, file, one template, or a list
    language: str = "en"  # CLIP_benchmark folders: classnames_{language}.txt (en: classnames.txt)


@dataclass(frozen=True)
class RetrievalOptions:
    """Image <-> text retrieval recall@k."""

    split: str | None = None
    caption_field: str | None = None  # json field / CSV column with captions (default: the .txt)
    recall_k: tuple[int, ...] = RECALL_KS  # the k of every recall@k metric
    language: str = "en"  # recorded in CLIP_benchmark result files

    def __post_init__(self) -> None:
        ks = tuple(self.recall_k)
        if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
            raise KontrastError(f"recall_k {self.recall_k!r}: give positive integers, e.g. 1 5 10")
        object.__setattr__(self, "recall_k", ks)


@dataclass(frozen=True)
class LinearProbeOptions:
    """Logistic-regression probe on frozen image features (C swept on validation data)."""

    split: str | None = None  # the test split of --data
    label_field: str | None = None
    classnames: str | os.PathLike | None = None
    train_data: Data | None = None  # default: the train split of the dataset folder
    train_split: str | None = None
    val_data: Data | None = None  # default: its val split, else a stratified 20% of train
    val_split: str | None = None
    k_shots: tuple[int, ...] = K_SHOTS  # also fit k-shot probes with k examples per class
    seed: int = 0  # k-shot samples and the holdout

    def __post_init__(self) -> None:
        ks = tuple(self.k_shots)
        if any(not isinstance(k, int) or k < 1 for k in ks):
            raise KontrastError(f"k_shots {self.k_shots!r}: sizes must be integers of at least 1")
        object.__setattr__(self, "k_shots", ks)


TaskOptions = ZeroShotOptions | RetrievalOptions | LinearProbeOptions
OPTIONS_OF_TASK: dict[str, type] = {
    "zeroshot": ZeroShotOptions,
    "retrieval": RetrievalOptions,
    "linear-probe": LinearProbeOptions,
}
