"""grain pipeline of tagging fine-tuning and masked pretraining (seed 004; AudioMAE ``dataset.py``): crop-or-pad
clips with multi-hot labels, optional mixup and roll / gain augmentation, shuffled epochs or AudioMAE's weighted
sampler. The scheme (per-host rows, exact resume) is that of ``data_pipelines.pipelines``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grain
import numpy as np

from data_pipelines import augment, mixing
from data_pipelines.pipelines import host_sharded_generated_iterator, host_sharded_train_iterator


class PretrainingTransform:
  """Clip index -> random ``clip_samples`` crop-or-pad with multi-hot labels, optionally roll/gain-augmented and mixed
  up with a random clip.

  With ``roll_mag`` each cropped clip goes through ``augment.roll_mag_aug`` (AudioMAE fine-tuning's ``roll_mag_aug``:
  random circular shift and a Beta(10, 10) + 0.5 gain), before mixup as in the reference. With probability
  ``mixup_prob`` (when ``mixup_alpha`` > 0) a second uniform clip of ``source`` is cropped and mixed in with
  λ ~ Beta(α, α) (``augment.mixup``: waveforms and labels with the same λ; AudioMAE fine-tuning uses α = 10,
  p = 0.5).
  """

  def __init__(self, source: Any, *, clip_samples: int, mixup_alpha: float = 0.0, mixup_prob: float = 1.0,
               roll_mag: bool = False):
    self.source = source
    self.clip_samples = int(clip_samples)
    self.mixup_alpha = mixup_alpha
    self.mixup_prob = mixup_prob
    self.roll_mag = roll_mag

  def _clip(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    element = self.source[int(i)]
    wav = mixing.random_crop(element["waveform"], self.clip_samples, rng)[0]
    if self.roll_mag:
      wav = augment.roll_mag_aug(wav, rng)
    return wav, np.asarray(element["labels"], np.float32), int(element["label"])

  def __call__(self, clip: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    wav, labels, label = self._clip(clip, rng)
    lam = 1.0
    if self.mixup_alpha > 0 and rng.random() < self.mixup_prob:
      other, other_labels, _ = self._clip(rng.integers(len(self.source)), rng)
      lam = augment.sample_mixup_lambda(rng, self.mixup_alpha)
      wav, labels = augment.mixup(wav, labels, other, other_labels, lam)
    return {"waveform": wav, "labels": labels, "label": np.int32(label), "mixup_lambda": np.float32(lam)}


class WeightedEpochSampler:
  """Clip ``n`` of an infinite stream of weighted-sampler epochs (AudioMAE's AudioSet fine-tuning sampler).

  Epoch ``e`` (elements ``e * epoch_len ... (e + 1) * epoch_len - 1``) is ``epoch_len`` clip indices drawn with
  probability proportional to ``weights`` (``augment.label_frequency_weights``), with or without replacement, from the
  generator seeded by ``(seed, e)``; the element's clip is a function of ``(seed, n)`` only, so the stream is the
  same for any number of hosts and resumes exactly. Source: AudioMAE ``main_finetune_as.py``
  (``WeightedRandomSampler(samples_weight, num_samples=epoch_len, replacement=...)``, ``epoch_len`` 200,000). The
  released script passes ``--replacement False`` to an argparse ``type=bool`` option, which makes it True; the default
  here follows that effective behaviour.

  Args:
    weights: (clips,) non-negative sampling weights.
    epoch_len: clips per epoch.
    seed: stream seed.
    replacement: draw with replacement (without: needs ``epoch_len`` <= number of clips with weight > 0).

  Raises:
    ValueError: negative / non-finite / all-zero weights, ``epoch_len`` < 1, or too few clips for sampling without
      replacement.
  """

  def __init__(self, weights: np.ndarray, *, epoch_len: int, seed: int, replacement: bool = True):
    w = np.asarray(weights, np.float64)
    if w.ndim != 1 or not np.all(np.isfinite(w)) or np.any(w < 0) or not np.any(w > 0):
      raise ValueError("sample weights must be a 1-D array of finite, non-negative values, not all zero")
    if epoch_len < 1:
      raise ValueError(f"epoch_len must be >= 1, got {epoch_len}")
    if not replacement and epoch_len > int(np.count_nonzero(w)):
      raise ValueError(f"epoch_len {epoch_len} > {int(np.count_nonzero(w))} clips with a non-zero weight: "
                       "sampling without replacement needs enough clips (use replacement=True or a shorter epoch)")
    self.probabilities = w / w.sum()
    self.epoch_len = int(epoch_len)
    self.seed = int(seed)
    self.replacement = bool(replacement)
    self._cache: tuple[int, np.ndarray] | None = None

  def epoch(self, e: int) -> np.ndarray:
    """The (epoch_len,) int64 clip indices of epoch ``e``."""
    if self._cache is None or self._cache[0] != e:
      rng = np.random.default_rng([self.seed, e])
      idx = rng.choice(len(self.probabilities), size=self.epoch_len, replace=self.replacement,
                       p=self.probabilities)
      self._cache = (e, idx)
    return self._cache[1]

  def clip(self, n: int) -> int:
    """Clip index of global element ``n``."""
    return int(self.epoch(n // self.epoch_len)[n % self.epoch_len])

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_cache"] = None
    return state


class _SampledElements:
  """``n -> transform(sampler.clip(n), rng)`` for ``host_sharded_generated_iterator``."""

  def __init__(self, sampler: WeightedEpochSampler, transform: Callable[[int, np.random.Generator], dict]):
    self.sampler = sampler
    self.transform = transform

  def __call__(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return self.transform(self.sampler.clip(n), rng)


def pretraining_train_iterator(source: Any, *, clip_samples: int, global_batch: int, seed: int, process_index: int,
                               process_count: int, num_workers: int = 0, mixup_alpha: float = 0.0,
                               mixup_prob: float = 1.0, roll_mag: bool = False,
                               sample_weights: np.ndarray | None = None, epoch_len: int | None = None,
                               replacement: bool = True) -> grain.DatasetIterator:
  """Infinite tagging / masked-pretraining batches: shuffled epochs of random crops (10 s: 160,000 samples at
  16 kHz), zero-padded when shorter, with optional roll / gain augmentation and mixup (``PretrainingTransform``).

  With ``sample_weights`` (one per clip of ``source``; e.g. ``augment.label_frequency_weights``) the clips come from a
  ``WeightedEpochSampler`` (epochs of ``epoch_len`` clips, default ``len(source)``) instead of shuffled epochs.

  Returns:
    iterator of dicts: ``waveform`` (b, clip_samples) float32; ``labels`` (b, classes) float32 (mixed when mixup
    applies); ``label`` (b,) int32 of the first clip; ``mixup_lambda`` (b,) float32 (1 = not mixed).

  Raises:
    ValueError: ``sample_weights`` does not have one entry per clip (or see ``WeightedEpochSampler``).
  """
  transform = PretrainingTransform(source, clip_samples=clip_samples, mixup_alpha=mixup_alpha,
                                   mixup_prob=mixup_prob, roll_mag=roll_mag)
  if sample_weights is not None:
    if len(sample_weights) != len(source):
      raise ValueError(f"sample_weights has {len(sample_weights)} entries for {len(source)} clips")
    sampler = WeightedEpochSampler(sample_weights, epoch_len=epoch_len or len(source), seed=seed,
                                   replacement=replacement)
    return host_sharded_generated_iterator(_SampledElements(sampler, transform), global_batch=global_batch,
                                           seed=seed, process_index=process_index, process_count=process_count,
                                           num_workers=num_workers)
  return host_sharded_train_iterator(range(len(source)), transform, global_batch=global_batch, seed=seed,
                                     process_index=process_index, process_count=process_count,
                                     num_workers=num_workers)
