"""Text embeddings for lists of texts, with a policy for texts longer than the context (77 tokens).

``long_text="truncate"`` (the default) cuts a long text to the context, like every CLIP, and warns
(``LongTextWarning``) so the cut is never silent. ``long_text="average"`` embeds overlapping windows of
the text (``Tokenizer.split_windows``) and averages their L2-normalised embeddings, so the end of a long
caption still counts. A text that fits gives the same embedding with either policy.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .errors import KontrastError

LONG_TEXT_MODES = ("truncate", "average")


class LongTextWarning(UserWarning):
    """A text was longer than the model's context and was cut."""


def _short(text: str, n: int = 50) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


@torch.no_grad()
def _encode_ids(model: torch.nn.Module, ids: torch.Tensor, batch_size: int,
                progress: Callable[[int], None] | None) -> torch.Tensor:
    """Normalised float32 embeddings ``[N, D]`` of token rows ``[N, L]``, in batches."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, ids.shape[0], batch_size):
        chunk = ids[start: start + batch_size].to(device)
        out.append(model.encode_text(chunk, normalize=True).float())
        if progress is not None:
            progress(chunk.shape[0])
    if not out:
        return torch.zeros((0, model.embed_dim), dtype=torch.float32, device=device)
    return torch.cat(out)


def encode_texts(
    model: torch.nn.Module,
    tokenizer: Callable,
    texts: Sequence[str],
    long_text: str = "truncate",
    batch_size: int = 256,
    stride: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """L2-normalised text embeddings ``[N, D]`` (float32, on the model's device).

    ``long_text``: ``"truncate"`` cuts texts over the context and emits one ``LongTextWarning`` naming
    how many were cut; ``"average"`` averages the normalised embeddings of overlapping windows
    (``stride`` tokens apart, default half a window) and renormalises. ``progress(n)`` is called with
    the number of token rows embedded after each batch.
    """
    if long_text not in LONG_TEXT_MODES:
        raise KontrastError(f"long_text={long_text!r} is not one of: {', '.join(LONG_TEXT_MODES)}")
    texts = list(texts)
    if long_text == "truncate":
        ids = tokenizer(texts)
        cut = list(getattr(tokenizer, "last_truncated", []) or [])
        if cut:
            warnings.warn(
                f"{len(cut)} text(s) longer than the context ({ids.shape[1]} tokens) were truncated, e.g. "
                f"{_short(texts[cut[0]])!r}; use long_text='average' (--long-text average) to keep all of them",
                LongTextWarning, stacklevel=2,
            )
        return _encode_ids(model, ids, batch_size, progress)

    split = getattr(tokenizer, "split_windows", None)
    if split is None:
        raise KontrastError(
            f"long_text='average' needs a tokenizer with split_windows (CLIP BPE); {type(tokenizer).__name__} has none,"
            " use long_text='truncate'"
        )
    ctx = int(getattr(tokenizer, "context_length", 77))
    rows: list[list[int]] = []
    owner: list[int] = []  # text index of each window
    for i, text in enumerate(texts):
        windows = split(text, ctx, stride)
        rows.extend(windows)
        owner.extend([i] * len(windows))
    ids = torch.zeros((len(rows), ctx), dtype=torch.long)
    for r, window in enumerate(rows):
        ids[r, : len(window)] = torch.tensor(window, dtype=torch.long)
    emb = _encode_ids(model, ids, batch_size, progress)  # [W, D], normalised
    index = torch.tensor(owner, dtype=torch.long, device=emb.device)
    sums = torch.zeros((len(texts), emb.shape[1]), dtype=emb.dtype, device=emb.device)
    sums.index_add_(0, index, emb)
    return F.normalize(sums, dim=-1)  # the mean's direction (the mean's length is not used)
