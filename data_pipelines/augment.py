"""Clip-level augmentation and sampling weights of the tagging / fine-tuning pipelines: pure numpy, deterministic
given the element's ``np.random.Generator`` (the scheme of ``data_pipelines.mixing``, which mixes sources).

Contents: mixup (``sample_mixup_lambda``, ``mixup``); AudioMAE fine-tuning's ``roll_mag_aug`` and the label-frequency
sampling weights ``label_frequency_weights``.
"""

from __future__ import annotations

import numpy as np


def sample_mixup_lambda(rng: np.random.Generator, alpha: float) -> float:
  """λ ~ Beta(α, α) (AudioMAE fine-tuning: α = 10)."""
  return float(rng.beta(alpha, alpha))


def mixup(x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray, lam: float) -> tuple[np.ndarray,
                                                                                                 np.ndarray]:
  """``(λ x1 + (1 - λ) x2, λ y1 + (1 - λ) y2)`` for waveforms (samples,) and multi-hot labels (classes,).

  Source: Zhang et al., mixup (2018); AudioMAE ``dataset.py`` mixes waveforms and labels with the same λ.
  """
  lam32 = np.float32(lam)
  return (lam32 * x1 + (1 - lam32) * x2).astype(np.float32), (lam32 * y1 + (1 - lam32) * y2).astype(np.float32)


# ---- AudioMAE fine-tuning: roll + magnitude augmentation, label-frequency sampling weights ----

ROLL_MAG_BETA = 10.0  # gain = Beta(10, 10) + 0.5, i.e. in (0.5, 1.5) with mean 1 (AudioMAE ``dataset.py``)


def roll_mag_aug(waveform: np.ndarray, rng: np.random.Generator, *, roll: bool = True) -> np.ndarray:
  """AudioMAE's ``roll_mag_aug``: a random circular shift of the clip and a random gain.

  ``out = roll(x, s) * g`` with ``s ~ U{0, ..., samples - 1}`` (samples) and ``g ~ Beta(10, 10) + 0.5`` (linear).

  Source: facebookresearch/AudioMAE ``dataset.py`` ``AudiosetDataset._roll_mag_aug`` (fine-tuning with
  ``--roll_mag_aug True``). Note: the reference draws the shift as ``randint(len(waveform))`` on a
  ``(channels=1, samples)`` array, so its shift is always 0 and only the gain takes effect; ``roll=False`` reproduces
  that, ``roll=True`` (default) is the evident intent (a shift over the whole clip).

  Args:
    waveform: (samples,) float.
    rng: the element's generator (the shift is drawn first, then the gain).
    roll: draw the circular shift (see the note).

  Returns:
    (samples,) float32.
  """
  x = np.asarray(waveform, np.float32)
  shift = int(rng.integers(x.shape[-1])) if roll and x.shape[-1] else 0
  gain = np.float32(rng.beta(ROLL_MAG_BETA, ROLL_MAG_BETA) + 0.5)
  return (np.roll(x, shift, axis=-1) * gain).astype(np.float32)


def label_frequency_weights(labels: np.ndarray, *, numerator: float = 1000.0, smoothing: float = 0.01) -> np.ndarray:
  """Per-clip sampling weights that balance rare and frequent labels (AudioSet fine-tuning's weighted sampler).

  ``w_label[k] = numerator / (count_k + smoothing)`` with ``count_k`` the number of clips carrying label ``k``;
  ``w_clip[i] = sum_k labels[i, k] * w_label[k]``.

  Source: facebookresearch/AudioMAE ``dataset/audioset/gen_weight.py`` (after Yuan Gong's AST ``gen_weight_file``).

  Args:
    labels: (clips, classes) multi-hot (0 / 1).

  Returns:
    (clips,) float64 weights; a clip without any label gets 0 (never drawn).

  Raises:
    ValueError: ``labels`` is not 2-D.
  """
  labels = np.asarray(labels)
  if labels.ndim != 2:
    raise ValueError(f"labels must be (clips, classes), got shape {labels.shape}")
  hot = (labels > 0).astype(np.float64)
  label_weight = numerator / (hot.sum(axis=0) + smoothing)
  return hot @ label_weight
