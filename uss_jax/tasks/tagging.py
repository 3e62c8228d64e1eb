"""Clip-level multi-label audio tagging (the sound event detector that later mines anchor segments).

Model: PANNs Cnn14 (``uss_jax.models.cnn14``) with its log-mel front end computed inside the jitted step; loss: BCE
on the clip logits (Kong et al., PANNs, 2020); evaluation: mAP (macro over classes with a positive, AudioSet style) and
top-1 accuracy against the primary label, on a held-out split that never shares a source recording with training.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Mapping
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np

from data_pipelines import pipelines
from uss_jax import losses, metrics
from uss_jax.audio import frontends
from uss_jax.models import cnn14
from uss_jax.tasks.base import Task


def prepare_labeled_audio(config, workdir: str):
  """Builds (process 0 first, then the others) and opens the labeled-audio dataset named by ``config.data``."""
  from data_pipelines.builders import labeled_audio  # pylint: disable=import-outside-toplevel

  d = config.data
  tfds_dir = d.get("tfds_dir") or os.path.join(workdir, "tfds")

  def build():
    return labeled_audio.build_labeled_audio(
        audio_dir=d.audio_dir, csv_path=d.csv_path, data_dir=tfds_dir, sample_rate=d.sample_rate,
        holdout_fraction=d.get("holdout_fraction", 0.2))

  if jax.process_count() > 1:
    dataset = build() if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices("labeled_audio_built")
    return dataset or build()
  return build()


def data_source(dataset, split: str):
  """A picklable random-access source of a built split (grain worker processes receive it by pickling)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  return tfds.builder_from_directory(dataset.data_dir).as_data_source(split)


class LabeledAudioTask(Task):
  """Base of the tasks that read a labeled folder + CSV (``config.data``): the dataset, its classes, clip lengths."""

  def __init__(self, config, workdir: str):
    super().__init__(config, workdir)
    self._dataset = None

  @property
  def dataset(self):
    if self._dataset is None:
      self._dataset = prepare_labeled_audio(self.config, self.workdir)
    return self._dataset

  def prepare(self) -> None:
    _ = self.dataset

  @property
  def class_names(self) -> list[str]:
    return list(self.dataset.class_names)

  def _clip_samples(self, seconds: float) -> int:
    return int(round(seconds * self.config.data.sample_rate))


class TaggingTask(LabeledAudioTask):
  """Multi-label tagging on a labeled folder + CSV (config: ``data``, ``frontend``, ``model``)."""

  def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
    return build_cnn14(self.config, len(self.class_names), rngs)

  def loss(self, model, batch, rngs):
    out = model(batch["waveform"], rngs=rngs)
    loss = losses.sigmoid_bce(out["logits"], batch["labels"])
    return loss, {}

  def eval_outputs(self, model, batch):
    out = model(batch["waveform"])
    return {"scores": out["clipwise_output"], "labels": batch["labels"], "label": batch["label"]}

  def summarize(self, outputs: Mapping[str, np.ndarray]) -> dict[str, float]:
    return {
        "mAP": metrics.mean_average_precision(outputs["labels"], outputs["scores"]),
        "accuracy": metrics.accuracy(outputs["label"], outputs["scores"]),
        "num_clips": float(len(outputs["label"])),
    }

  def train_iterator(self, process_index: int, process_count: int) -> Iterator[dict[str, np.ndarray]]:
    return pipelines.tagging_train_iterator(
        data_source(self.dataset, "train"), clip_samples=self._clip_samples(self.config.data.clip_seconds),
        global_batch=self.config.batch_size, seed=self.config.seed, process_index=process_index,
        process_count=process_count, num_workers=self.config.input.get("num_workers", 0))

  def eval_iterator(self, process_index: int, process_count: int) -> Iterator[dict[str, np.ndarray]]:
    return pipelines.tagging_eval_batches(
        data_source(self.dataset, "test"), clip_samples=self._clip_samples(self.config.data.eval_clip_seconds),
        global_batch=self.config.get("eval_batch_size", self.config.batch_size), process_index=process_index,
        process_count=process_count)

  def write_artifacts(self, outputs: Mapping[str, np.ndarray], summary: Mapping[str, float], step: int) -> None:
    """``<workdir>/eval_step<N>_per_class.csv``: average precision and number of positives per class."""
    if "://" in self.workdir:
      return
    _, ap = metrics.mean_average_precision(outputs["labels"], outputs["scores"], return_per_class=True)
    path = os.path.join(self.workdir, f"eval_step{step}_per_class.csv")
    with open(path, "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["class", "positives", "average_precision"])
      for name, positives, value in zip(self.class_names, outputs["labels"].sum(0), ap):
        w.writerow([name, int(positives), "" if np.isnan(value) else f"{value:.4f}"])


def build_cnn14(config, num_classes: int, rngs: nnx.Rngs) -> cnn14.Cnn14:
  """The Cnn14 of ``config.model`` with the front end of ``config.frontend`` (compute dtype ``config.compute_dtype``)."""
  fe = dict(config.frontend)
  frontend = frontends.get_frontend(fe.pop("name"), **fe)
  m = config.model
  return cnn14.Cnn14(
      num_classes=num_classes, channels=tuple(m.channels), head=m.get("head", "clip"), frontend=frontend,
      dropout=m.get("dropout", 0.2), spec_augment=m.get("spec_augment", False),
      dtype=jnp.dtype(config.get("compute_dtype", "float32")), rngs=rngs)
