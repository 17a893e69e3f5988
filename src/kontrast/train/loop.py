"""The contrastive training loop (single process or torchrun), driven by a :class:`TrainConfig`.

One optimiser step takes one global batch: each rank encodes its slice, the loss all-gathers features,
gradients are averaged over ranks (:mod:`.distributed`), clipped, and AdamW steps; ``logit_scale`` is
then clamped to ln(100). With ``accum_steps > 1`` the batch is split into micro-batches the way open_clip
does it: features of all micro-batches are first computed without gradients, then each micro-batch is
re-encoded with gradients and the loss uses it together with the cached features of the others, so the
gradient equals the full-batch gradient (the temperature's accumulated gradient is divided by the
number of micro-batches for the same reason).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..cpu import train_precision
from ..errors import KontrastError
from . import checkpoint as ckpt_io
from .config import TrainConfig, validate
from .distributed import DistInfo, average_gradients, barrier, init_distributed
from .locking import apply_locks, hf_text, text_fully_locked
from .losses import SIGLIP_INIT_LOGIT_BIAS, SIGLIP_INIT_LOGIT_SCALE, build_loss, clamp_logit_scale
from .metrics import MetricsWriter
from .optim import CosineSchedule, build_optimizer
from .text_cache import TextFeatureCache

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ model
def build_model(cfg: TrainConfig) -> nn.Module:
    """A fresh model (architecture name or inline config) or a checkpoint to fine-tune, with its temperature
    reset to ``cfg.init_logit_scale`` when the recipe sets one."""
    model = _build_model(cfg)
    if cfg.init_logit_scale is not None:
        with torch.no_grad():
            model.logit_scale.fill_(math.log(cfg.init_logit_scale))
    return model


def _build_model(cfg: TrainConfig) -> nn.Module:
    from .. import api

    if cfg.model_config is not None:
        mcfg = ModelConfig.from_dict(cfg.model_config)
        if cfg.loss == "siglip" and mcfg.init_logit_bias is None:
            mcfg = replace(mcfg, init_logit_bias=SIGLIP_INIT_LOGIT_BIAS, init_logit_scale=SIGLIP_INIT_LOGIT_SCALE)
        return api.create_model(mcfg)
    if api.canonical_name(cfg.model) is not None and not cfg.pretrained and not Path(cfg.model).exists():
        mcfg = api.get_model_config(cfg.model)
        if cfg.loss == "siglip":
            mcfg = replace(mcfg, init_logit_bias=SIGLIP_INIT_LOGIT_BIAS, init_logit_scale=SIGLIP_INIT_LOGIT_SCALE)
        return api.create_model(mcfg)
    model, _, _ = api.load(cfg.model, pretrained=cfg.pretrained)
    model.float()
    if hasattr(model, "missing_tower"):  # one CLIP tower (a Hugging Face *WithProjection folder)
        raise model.missing_tower("contrastive training")
    if cfg.loss == "siglip" and model.logit_bias is None:
        model.logit_bias = nn.Parameter(torch.tensor(SIGLIP_INIT_LOGIT_BIAS))
        model.config = replace(model.config, init_logit_bias=SIGLIP_INIT_LOGIT_BIAS)
    return model


def default_loss(model: nn.Module) -> str:
    """The loss a model is trained with when the recipe does not say: SigLIP's sigmoid loss for models whose
    probabilities are sigmoids (SigLIP, or a CLIP with a ``logit_bias``), else CLIP's softmax loss."""
    from ..zeroshot import uses_sigmoid

    return "siglip" if uses_sigmoid(model) else "clip"


# ------------------------------------------------------------------------------------------------- data
def _decoder(model: nn.Module, cfg: TrainConfig):
    from ..data.stream import AugmentConfig, SampleDecoder

    aug = AugmentConfig(cfg.aug_scale, cfg.aug_ratio, cfg.aug_jitter, cfg.aug_grayscale, cfg.caption_head, cfg.aug_outline)
    pre = model.record.preprocess  # the model's own normalisation
    return SampleDecoder(model.image_size, pre.mean, pre.std, aug)


def build_train_data(model: nn.Module, cfg: TrainConfig, info: DistInfo, start_step: int,
                     stream_state: dict[int, tuple[int, int]] | None = None):
    """``(batch iterator, total_steps, steps_per_epoch)`` for this rank, positioned at ``start_step``
    (streaming also needs the workers' stream positions saved in the checkpoint)."""
    from ..data import stream
    from ..data.sources import TarSource, open_source

    source = open_source(cfg.train_data, follow_symlinks=True)  # training reads what the recipe names
    mode = cfg.data_mode
    if mode == "auto":
        mode = "indexed"
        if isinstance(source, TarSource) and sum(Path(s).stat().st_size for s in source.shards) > 4 << 30:
            mode = "stream"
    if mode == "cached":
        return _cached_data(model, cfg, info, start_step)
    decoder = _decoder(model, cfg)
    if mode == "indexed":
        records = stream.load_records(source, cfg.caption_key)
        steps_per_epoch = len(records) // cfg.batch_size
        total = cfg.steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
        loader = stream.indexed_loader(records, decoder, cfg.batch_size, cfg.seed, start_step, total,
                                       info.rank, info.world_size, cfg.workers)
        return iter(loader), total, steps_per_epoch
    if not isinstance(source, TarSource):
        raise KontrastError("data_mode 'stream' needs tar shards; use 'indexed' for folders and CSV files")
    n = stream.count_tar_samples(source.shards)
    steps_per_epoch = max(1, n // cfg.batch_size)
    total = cfg.steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    ds = stream.WebDatasetStream(source.shards, decoder, cfg.batch_size // info.world_size, cfg.seed, info.rank,
                                 info.world_size, cfg.workers, cfg.shuffle_buffer, start_step, cfg.caption_key,
                                 stream_state)
    return iter(stream.webdataset_loader(ds, cfg.workers)), total, steps_per_epoch


def _cached_data(model: nn.Module, cfg: TrainConfig, info: DistInfo, start_step: int):
    """``data_mode: cached``: images decoded once into a uint8 cache, augmented per batch (:mod:`.cached_data`)."""
    from .cached_data import BatchAugment, CachedBatches, load_cached_pairs

    size = model.image_size
    pairs, skipped = load_cached_pairs(cfg.train_data, cfg.cache_size or -(-size * 9 // 8), cfg.caption_key)
    if skipped:
        log.warning("%d training samples skipped (undecodable image or no caption)", skipped)
    pre = model.record.preprocess  # the model's own normalisation
    augment = BatchAugment(size, pre.mean, pre.std, cfg.aug_scale, cfg.aug_ratio, cfg.aug_jitter, cfg.aug_grayscale,
                           cfg.aug_outline)
    steps_per_epoch = max(1, len(pairs) // cfg.batch_size)
    total = cfg.steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    batches = CachedBatches(pairs, augment, cfg.batch_size, cfg.seed, start_step, info.rank, info.world_size,
                            cfg.caption_head)
    return batches, total, steps_per_epoch


# ------------------------------------------------------------------------------------------------- step
class Trainer:
    """Holds the model, optimiser and data of one run; :meth:`run` trains to the end."""

    def __init__(self, cfg: TrainConfig, resume: str | None = None,
                 progress: Callable[[dict[str, Any]], None] | None = None, info: DistInfo | None = None) -> None:
        validate(cfg)
        self.cfg = cfg
        self.info = info or init_distributed(cfg.device)
        self.progress = progress
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.run_dir = Path(cfg.output)
        self.device = torch.device(self.info.device)
        self.precision = train_precision(cfg.precision, self.device)  # "auto" follows the CPU/GPU
        state = ckpt_io.load_checkpoint(ckpt_io.resolve_resume(resume, self.run_dir)) if resume else None
        torch.manual_seed(cfg.seed)
        if state is not None:
            from ..models import CLIP, model_for_record
            from ..record import ModelRecord

            if "model_record" in state:  # CLIP, or another family's model (SigLIP)
                self.model = model_for_record(ModelRecord.from_dict(state["model_record"], "training checkpoint"))
            else:  # a checkpoint written before model records
                self.model = CLIP(ModelConfig.from_dict(state["model_config"], "training checkpoint"))
            missing, unexpected = self.model.load_state_dict(state["model"], strict=False)
            if unexpected or any(not k.startswith("text.transformer.") for k in missing):
                raise KontrastError(f"checkpoint does not fit its config: missing {missing[:3]}, unexpected {unexpected[:3]}")
        else:
            self.model = build_model(cfg)
        if cfg.loss is None:  # the loss follows the model family (SigLIP models: the sigmoid loss)
            cfg = self.cfg = dataclasses.replace(cfg, loss=default_loss(self.model))
        self.model.to(self.device)
        if cfg.grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        self.model.train()
        apply_locks(self.model, cfg)
        from ..record import build_tokenizer

        self.tokenizer = build_tokenizer(self.model.record)
        self.text_cache = TextFeatureCache(self.model, self.tokenizer) if text_fully_locked(cfg) else None
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.model, cfg.lr, cfg.weight_decay, cfg.betas, cfg.eps)
        self.loss_fn = build_loss(cfg.loss, cfg.local_loss, cfg.gather_with_grad, self.info.rank, self.info.world_size)
        self.step = 0
        self.stream_state: dict[int, tuple[int, int]] = {}
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.step = int(state["step"])
            ckpt_io.set_rng_state(state["rng"])
            ranks = state.get("stream_state") or []
            self.stream_state = dict(ranks[self.info.rank]) if len(ranks) > self.info.rank else {}
        self.batches, self.total_steps, self.steps_per_epoch = build_train_data(self.model, cfg, self.info, self.step,
                                                                                self.stream_state)
        if self.text_cache is not None and hasattr(self.batches, "all_captions"):
            self.text_cache.precompute(self.batches.all_captions(), self.device)
        self.schedule = CosineSchedule(self.optimizer, cfg.lr, cfg.warmup, self.total_steps, cfg.min_lr)
        if state is not None:
            self._resume_schedule(state)
        self.skipped = int(state.get("skipped", 0)) if state else 0
        self.val = None
        self.metrics = None
        if self.info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            import json

            resolved = cfg.to_dict() | {"model_config_resolved": self.model.config.to_dict(),
                                        "model_record": self.model.record.to_dict(), "total_steps": self.total_steps,
                                        "precision_resolved": self.precision,
                                        "world_size": self.info.world_size}
            (self.run_dir / "config.json").write_text(json.dumps(resolved, indent=2, default=str) + "\n", encoding="utf-8")
            self.metrics = MetricsWriter(self.run_dir, cfg.tensorboard, resume_step=self.step if state else None)

    def _resume_schedule(self, state: dict[str, Any]) -> None:
        """Continue the saved learning-rate schedule, and say so when this run's config differs from the saved one."""
        changed = ckpt_io.config_differences(state.get("train_config"), self.cfg.to_dict())
        if "schedule" in state:
            self.schedule.load_state_dict(state["schedule"])
        if changed:
            s = self.schedule
            log.warning("resuming step %d with a training config that differs from the checkpoint's (%s); the model, "
                        "optimiser and RNG states come from the checkpoint, and so does the learning-rate schedule "
                        "(lr %g, warmup %d, min_lr %g, %d steps)", self.step, "; ".join(changed), s.base_lr, s.warmup,
                        s.min_lr, s.total)

    # ---- encoding -------------------------------------------------------------------------------------
    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def encode(self, images: torch.Tensor, captions: list[str], grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised ``(image [n, E], text [n, E])`` features, float32."""
        ctx = contextlib.nullcontext() if grad else torch.no_grad()
        with ctx, self._autocast():
            with torch.no_grad() if self.cfg.lock_image else contextlib.nullcontext():
                img = self.model.encode_image(images)
            if self.text_cache is not None:
                txt = self.text_cache.encode(captions, self.device)
            else:
                txt = self.model.encode_text(self.tokenizer(captions).to(self.device))
        return F.normalize(img.float(), dim=-1), F.normalize(txt.float(), dim=-1)

    def _loss(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        bias = self.model.logit_bias
        return self.loss_fn(img, txt, self.model.logit_scale.exp(), bias)

    def compute_gradients(self, images: torch.Tensor, captions: list[str]) -> float:
        """Forward + backward of one global batch (this rank's slice) and the cross-rank gradient average;
        returns the loss of the global batch (averaged over ranks, which for ``local_loss`` is the global loss)."""
        accum = self.cfg.accum_steps
        mult = getattr(self.loss_fn, "grad_multiplier", 1.0)
        if accum == 1:
            img, txt = self.encode(images, captions, grad=True)
            loss = self._loss(img, txt)
            (loss * mult).backward()
            value = loss.detach()
        else:
            chunks = list(zip(images.chunk(accum), _chunk_list(captions, accum)))
            cached = [self.encode(x, c, grad=False) for x, c in chunks]
            for j, (x, c) in enumerate(chunks):
                img_j, txt_j = self.encode(x, c, grad=True)
                img = torch.cat([img_j if k == j else cached[k][0] for k in range(len(chunks))])
                txt = torch.cat([txt_j if k == j else cached[k][1] for k in range(len(chunks))])
                loss = self._loss(img, txt)
                (loss * mult).backward()
            value = loss.detach()
        # The temperature (and bias) sees the whole batch's loss in every backward pass: each micro-batch
        # gave its full gradient, and the grad multiplier (for the features of this rank) must not scale it.
        for p in (self.model.logit_scale, self.model.logit_bias):
            if p is not None and p.grad is not None:
                p.grad.div_(accum * mult)
        average_gradients(self.params, self.info.world_size)
        if self.info.distributed:
            import torch.distributed as dist

            value = value.clone()
            dist.all_reduce(value)
            value /= self.info.world_size
        return float(value)

    def train_step(self, images: torch.Tensor, captions: list[str]) -> float:
        """One optimiser step on this rank's slice of the global batch; returns the loss value."""
        value = self.compute_gradients(images, captions)
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        clamp_logit_scale(self.model)
        return value

    # ---- checkpoints ----------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        from ..api import _state_for_saving

        keep_text = not (text_fully_locked(self.cfg) and hf_text(self.model))
        return {"step": self.step, "model": _state_for_saving(self.model, include_text_encoder=keep_text),
                "model_config": self.model.config.to_dict(), "model_record": self.model.record.to_dict(),
                "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "rng": ckpt_io.rng_state(), "skipped": self.skipped,
                "stream_state": self._gather_stream_state(),
                "train_config": self.cfg.to_dict()}

    def _gather_stream_state(self) -> list[dict[int, tuple[int, int]]]:
        """Every rank's streaming positions (rank order); empty dicts for indexed data."""
        if not self.info.distributed:
            return [dict(self.stream_state)]
        import torch.distributed as dist

        out: list = [None] * self.info.world_size
        dist.all_gather_object(out, dict(self.stream_state))
        return out

    def save_checkpoint(self) -> None:
        state = self.state()  # collective (stream positions): every rank builds it
        if self.info.is_main:
            ckpt_io.save_checkpoint(state, self.run_dir / "checkpoints", self.step, self.cfg.keep_checkpoints)
        barrier(self.info)

    # ---- validation -----------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Contrastive loss and retrieval recall@1/5 on ``val_data`` (rank 0, eval preprocessing)."""
        if not self.cfg.val_data or not self.info.is_main:
            return {}
        from .validate import contrastive_metrics

        was_training = self.model.training
        self.model.eval()
        try:
            out = contrastive_metrics(self, self.cfg.val_data)
        finally:
            if was_training:
                self.model.train()
                apply_locks(self.model, self.cfg)
        return out

    # ---- main loop ------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        last: dict[str, Any] = {}
        t0, seen = time.time(), 0
        while self.step < self.total_steps:
            batch = next(self.batches)
            self.skipped += batch.skipped
            if batch.position is not None:
                self.stream_state[batch.position[0]] = batch.position[1:]
            lr = self.schedule(self.step)
            loss = self.train_step(batch.images.to(self.device), batch.captions)
            self.step += 1
            seen += batch.images.shape[0] * self.info.world_size
            if cfg.debug_step_sleep:
                time.sleep(cfg.debug_step_sleep)
            record = None
            if self.step % cfg.log_every == 0 or self.step == self.total_steps or self.step == 1:
                dt = max(time.time() - t0, 1e-9)
                record = {"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 3), "loss": loss, "lr": lr,
                          "logit_scale": float(self.model.logit_scale.detach().exp()), "samples_per_s": seen / dt,
                          "skipped": self.skipped}
                if self.model.logit_bias is not None:
                    record["logit_bias"] = float(self.model.logit_bias.detach())
                t0, seen = time.time(), 0
            if (cfg.val_every and self.step % cfg.val_every == 0) or self.step == self.total_steps:
                val = self.validate()
                if val:
                    record = (record or {"step": self.step}) | val
            if record is not None and self.info.is_main:
                self.metrics.write(record)
                last |= record
                if self.progress:
                    self.progress(dict(record, total_steps=self.total_steps))
            if self.step % cfg.save_every == 0 or self.step == self.total_steps:
                self.save_checkpoint()
        if self.info.is_main:
            if cfg.save_model:
                self.model.eval()
                save_trained(self.model, cfg.save_model)
            self.metrics.close()
        return last


def save_trained(model: nn.Module, folder: str) -> None:
    """Write the trained model: kontrast's format for CLIP models; another family (SigLIP) in the layout it was
    read from (open_clip or Hugging Face), which its loader reads back."""
    from ..api import export, save

    if isinstance(model.config, ModelConfig):
        save(model, folder)
        return
    born = model.record.provenance.format or ""
    export(model, folder, format="hf" if born.endswith("hf") else "open_clip")


def _chunk_list(items: list[str], n: int) -> list[list[str]]:
    size = math.ceil(len(items) / n)
    return [items[i: i + size] for i in range(0, len(items), size)]


def train(cfg: TrainConfig, resume: str | None = None, progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train a model as ``cfg`` says (torchrun-aware); returns the last logged metrics (rank 0)."""
    trainer = Trainer(cfg, resume=resume, progress=progress)
    try:
        return trainer.run()
    finally:
        from .distributed import cleanup

        cleanup(trainer.info)
