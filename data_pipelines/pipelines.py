"""grain input pipelines, one function per task family; all deterministic, checkpointable and sharded per host.

Every pipeline follows one scheme so that the global batch does not depend on how many processes read it:

    source -> seed -> shuffle -> repeat -> random_map(per-element transform, seeded by the GLOBAL element index)
           -> HostRows(this process's rows of each global batch) -> batch(per-host batch) -> iter -> mp_prefetch

Process ``i`` of ``P`` loads rows ``[i*b, (i+1)*b)`` of every global batch of ``B = P*b`` (the order in which
``uss_jax.train.sharding.create_mesh`` lays out devices), and ``jax.make_array_from_process_local_data`` assembles the
global array. One process and two processes therefore train on exactly the same global batches, and the iterator's
``get_state`` / ``set_state`` (checkpointed by the trainer) resume exactly, with or without worker processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np


class HostRows(grain.MapDataset):
  """The rows of each global batch that belong to one process.

  Local element ``j`` is global element ``(j // b) * B + i * b + j % b`` with ``b = B / P`` rows per process.

  Args:
    parent: the global, already shuffled / repeated / transformed dataset.
    global_batch: ``B``, the batch size over all processes.
    process_index, process_count: ``i`` and ``P``.
  Raises:
    ValueError: ``B`` is not divisible by ``P``.
  """

  def __init__(self, parent: grain.MapDataset, global_batch: int, process_index: int, process_count: int):
    super().__init__(parent)
    if global_batch % process_count:
      raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
    self._global_batch = global_batch
    self._rows = global_batch // process_count
    self._offset = process_index * self._rows

  def __len__(self) -> int:
    return (len(self._parent) // self._global_batch) * self._rows

  def _global_index(self, index: int) -> int:
    return (index // self._rows) * self._global_batch + self._offset + index % self._rows

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self._global_index(index)]

  def __str__(self) -> str:
    return f"HostRows(offset={self._offset}, rows={self._rows}, global_batch={self._global_batch})"


def to_float32(waveform: np.ndarray) -> np.ndarray:
  """int16 PCM -> float32 in [-1, 1) (divided by 32768); float input is returned as float32."""
  waveform = np.asarray(waveform)
  if waveform.dtype == np.int16:
    return waveform.astype(np.float32) / 32768.0
  return waveform.astype(np.float32, copy=False)


def crop_or_pad(waveform: np.ndarray, length: int, rng: np.random.Generator | None = None) -> np.ndarray:
  """Fixed-length window of a 1-D waveform (samples,).

  Longer: a uniformly random window if ``rng`` is given, else the first ``length`` samples. Shorter: zero-padded at
  the end (AudioMAE / PANNs ``pad_or_truncate``).
  """
  n = waveform.shape[0]
  if n >= length:
    start = int(rng.integers(0, n - length + 1)) if rng is not None else 0
    return waveform[start:start + length]
  return np.pad(waveform, (0, length - n))


def host_sharded_train_iterator(source: Any, transform: Callable[[Mapping[str, Any], np.random.Generator], dict],
                                *, global_batch: int, seed: int, process_index: int, process_count: int,
                                num_workers: int = 0, shuffle: bool = True) -> grain.DatasetIterator:
  """The generic infinite training iterator of the module docstring.

  Args:
    source: random-access source (``tfds`` ``as_data_source`` or any ``Sequence``).
    transform: ``(element, rng) -> dict of numpy arrays``; ``rng`` is seeded from the global element index.
    global_batch: batch size over all processes; each process yields ``global_batch / process_count`` rows.
    seed: shuffle and augmentation seed.
    num_workers: grain ``mp_prefetch`` worker processes (0 = in-process).
  Returns:
    a ``grain.DatasetIterator`` with ``get_state`` / ``set_state``.
  """
  ds = grain.MapDataset.source(source).seed(seed)
  if shuffle:
    ds = ds.shuffle()
  ds = ds.repeat(None).random_map(transform)
  ds = HostRows(ds, global_batch, process_index, process_count).batch(global_batch // process_count,
                                                                      drop_remainder=True)
  it = ds.to_iter_dataset()
  if num_workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return iter(it)


def host_sharded_eval_batches(source: Any, transform: Callable[[Mapping[str, Any]], dict], *, global_batch: int,
                              process_index: int, process_count: int) -> Iterator[dict[str, np.ndarray]]:
  """Every element of ``source`` exactly once, in order, as this process's rows of padded global batches.

  The last global batch is padded by repeating element 0; the ``mask`` entry (float32, 1 = real) marks real rows.
  """
  n = len(source)
  rows = global_batch // process_count
  for start in range(0, n, global_batch):
    idx = range(start + process_index * rows, start + (process_index + 1) * rows)
    batch = stack([transform(source[i if i < n else 0]) for i in idx])
    batch["mask"] = np.array([i < n for i in idx], np.float32)
    yield batch


# ---- tagging / masked pretraining (seed 004): crop-or-pad clips with multi-hot labels ----


def tagging_transform(clip_samples: int, train: bool) -> Callable[..., dict[str, np.ndarray]]:
  """Element -> ``{'waveform': (clip_samples,) float32, 'labels': (classes,) float32, 'label': int32}``."""

  def fn(element: Mapping[str, Any], rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    wav = to_float32(element["waveform"])
    wav = crop_or_pad(wav, clip_samples, rng if train else None)
    return {"waveform": wav, "labels": np.asarray(element["labels"], np.float32),
            "label": np.asarray(element["label"], np.int32)}

  return fn


def tagging_train_iterator(source: Any, *, clip_samples: int, global_batch: int, seed: int, process_index: int,
                           process_count: int, num_workers: int = 0) -> grain.DatasetIterator:
  """Shuffled, repeated random crops of ``clip_samples`` samples with multi-hot labels (per-host rows)."""
  return host_sharded_train_iterator(source, tagging_transform(clip_samples, train=True), global_batch=global_batch,
                                     seed=seed, process_index=process_index, process_count=process_count,
                                     num_workers=num_workers)


def tagging_eval_batches(source: Any, *, clip_samples: int, global_batch: int, process_index: int,
                         process_count: int) -> Iterator[dict[str, np.ndarray]]:
  """Each held-out clip once: its first ``clip_samples`` samples (zero-padded), with labels and ``mask``."""
  return host_sharded_eval_batches(source, tagging_transform(clip_samples, train=False), global_batch=global_batch,
                                   process_index=process_index, process_count=process_count)


def stack(elements: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """Stacks a list of equal-shaped element dicts into a batch dict."""
  return {k: np.stack([e[k] for e in elements]) for k in elements[0]}
