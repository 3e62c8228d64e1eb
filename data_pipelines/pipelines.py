"""grain input pipelines, one function per task family; all deterministic, checkpointable and sharded per host.

Every pipeline follows one scheme so that the global batch does not depend on how many processes read it:

    source -> seed -> shuffle -> repeat -> random_map(per-element transform, seeded by the GLOBAL element index)
           -> HostRows(this process's rows of each global batch) -> batch(per-host batch) -> iter -> mp_prefetch

Process ``i`` of ``P`` loads rows ``[i*b, (i+1)*b)`` of every global batch of ``B = P*b`` (the order in which
``uss_jax.train.sharding.create_mesh`` lays out devices), and ``jax.make_array_from_process_local_data`` assembles the
global array. One process and two processes therefore train on exactly the same global batches, and the iterator's
``get_state`` / ``set_state`` (checkpointed by the trainer) resume exactly, with or without worker processes.

Streams that do not walk a data source in order (class-balanced USS pairs, Scaper-like TSE soundscapes) replace the
first four stages by ``range(2**62) -> seed -> random_map(make_element(global index, rng))``
(``host_sharded_generated_iterator``); the element is then a function of the seed and its global index only.

Task families (mixing itself in ``data_pipelines.mixing``):
  tagging          ``tagging_train_iterator`` / ``tagging_eval_batches``
  pretraining      ``data_pipelines.pretraining``: ``pretraining_train_iterator`` (crop-or-pad, multi-hot labels,
                   optional mixup, roll / gain augmentation, weighted sampler)
  separation       ``separation_train_iterator``, ``separation_eval_set`` (bytedance/uss, seed 000);
                   ``separation_online_train_iterator`` (whole clips; anchors cut and mixed in the train step)
  SoundFilter      ``data_pipelines.extraction``: ``soundfilter_train_iterator``, ``soundfilter_eval_set`` (seed 003)
  extraction       ``data_pipelines.extraction``: ``tse_train_iterator``, ``tse_eval_set`` (seed 002)
  eval sets        ``save_eval_set`` / ``load_eval_set`` (atomic npz with the build settings, refused when they
                   differ), ``stored_eval_set`` (process 0 builds, all load), ``eval_set_batches`` (per-host batches)

Sources handed to worker processes are pickled: open tfds datasets with
``tfds.builder_from_directory(dir).as_data_source(split)`` (a ``build_labeled_audio`` builder's own
``as_data_source`` does not pickle).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator, Mapping, Sequence
import json
import threading
from typing import Any

import grain
import numpy as np

from data_pipelines import mixing
from data_pipelines.anchors import AnchorIndex
from uss_jax import io

SETTINGS_KEY = "settings_json"  # the 0-d string entry of a stored eval set holding its build settings (JSON)


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
  return mixing.crop_or_pad(waveform, length, rng)


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
  return _per_host_batches(ds, global_batch, process_index, process_count, num_workers)


# Threads that compute batches (in the main process; one in each worker process, where a second thread only adds GIL
# contention) and how many batches they may run ahead. grain's defaults (16 threads, 500 elements) would buffer 500
# batches: gigabytes of audio, and CPU spent racing ahead.
READ_THREADS = 4
PREFETCH_BATCHES = 8


def _per_host_batches(ds: grain.MapDataset, global_batch: int, process_index: int, process_count: int,
                      num_workers: int, read_threads: int | None = None,
                      prefetch_batches: int = PREFETCH_BATCHES) -> grain.DatasetIterator:
  """The tail of the scheme: HostRows -> batch -> iter (bounded thread prefetch) -> optional mp_prefetch."""
  ds = HostRows(ds, global_batch, process_index, process_count).batch(global_batch // process_count,
                                                                      drop_remainder=True)
  if read_threads is None:
    read_threads = READ_THREADS if num_workers == 0 else 1
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                            prefetch_buffer_size=max(prefetch_batches, read_threads)))
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


# ---- streams generated from the global element index (class-balanced pairs, Scaper-like soundscapes) ----

# Length of the virtual index range of generated streams (never exhausted in practice).
_GENERATED_ELEMENTS = 2**62


def host_sharded_generated_iterator(make_element: Callable[[int, np.random.Generator], dict], *, global_batch: int,
                                    seed: int, process_index: int, process_count: int,
                                    num_workers: int = 0) -> grain.DatasetIterator:
  """Per-host batches of an infinite stream whose element ``n`` is ``make_element(n, rng_n)``.

  Like ``host_sharded_train_iterator`` but without a data-source order: the element is built from its global index
  ``n`` (e.g. a class-balanced queue slot) and grain's generator seeded by ``(seed, n)``; same HostRows layout,
  same exact ``get_state`` / ``set_state``.

  Args:
    make_element: picklable ``(global index, rng) -> dict of numpy arrays`` (pickled into worker processes).
    global_batch, seed, process_index, process_count, num_workers: as in ``host_sharded_train_iterator``.
  """
  ds = grain.MapDataset.range(_GENERATED_ELEMENTS).seed(seed).random_map(make_element)
  return _per_host_batches(ds, global_batch, process_index, process_count, num_workers)


def _waveform(source: Any, clip: int) -> np.ndarray:
  return source[int(clip)]["waveform"]


# ---- query-based universal sound separation (bytedance/uss, seed 000) ----


class SeparationElements:
  """Element ``n`` of the USS training stream: an energy-matched pair of anchor segments of different classes.

  The target is queue slot ``n`` of ``mixing.BalancedSampler`` over the anchor rows (class-balanced as in
  bytedance/uss ``samplers.py``), the interferer the next slot of another class (``BalancedSampler.pair_slots``);
  each is the AnchorIndex segment ``[start, start + segment_samples)`` of its clip, zero-padded past the clip's end
  (centred on the anchor when ``segment_samples`` differs from ``anchor_index.segment_samples``); they are mixed by
  ``mixing.mix_pair`` (energy matching, optional Eq. 2 peak normalisation). Nothing is random beyond the sampler,
  so element ``n`` depends only on ``(seed, n)``.

  Args:
    source: random-access source of dicts with ``waveform`` (samples,) int16 / float, indexed by
      ``anchor_index.clip``.
    anchor_index: ``data_pipelines.anchors.AnchorIndex`` of that source.
    segment_samples: output length in samples (2 s at 32 kHz in bytedance/uss: 64,000).
    seed: sampler seed.
    normalize: seed 000 Eq. (2) (mixture and target each divided by its own max |.|).
    with_interferer: also return the interferer's share of the mixture.
  Raises:
    ValueError: the anchor index has fewer than two classes.
  """

  _CACHE = 4  # segments kept per thread

  def __init__(self, source: Any, anchor_index: AnchorIndex, *, segment_samples: int, seed: int,
               normalize: bool = True, with_interferer: bool = False):
    self.source = source
    self.index = anchor_index
    self.segment_samples = int(segment_samples)
    self.offset = (int(anchor_index.segment_samples) - self.segment_samples) // 2
    self.sampler = mixing.BalancedSampler(anchor_index.label, seed)
    if self.sampler.num_classes < 2:
      raise ValueError("separation pairs need an anchor index with at least two classes")
    self.normalize = normalize
    self.with_interferer = with_interferer
    self._local = threading.local()

  def recipe(self, n: int) -> dict[str, Any]:
    """Which anchor rows element ``n`` mixes: class ids, clips and segment starts of target and interferer."""
    t_slot, i_slot = self.sampler.pair_slots(n)
    (t_class, t_row), (i_class, i_row) = self.sampler.slot(t_slot), self.sampler.slot(i_slot)
    return {"class_id": t_class, "interferer_class_id": i_class,
            "target_clip": int(self.index.clip[t_row]), "interferer_clip": int(self.index.clip[i_row]),
            "target_start": int(self.index.start[t_row]) + self.offset,
            "interferer_start": int(self.index.start[i_row]) + self.offset}

  def segment(self, clip: int, start: int) -> np.ndarray:
    """The float32 segment ``[start, start + segment_samples)`` of ``clip`` (do not modify it: it is cached).

    The interferer of element ``n`` is usually the target of element ``n + 1``, and grain computes a batch's
    consecutive elements in one thread, so a small per-thread cache of the last segments halves the clip reads.
    """
    cache = getattr(self._local, "cache", None)
    if cache is None:
      cache = self._local.cache = collections.OrderedDict()
    key = (int(clip), int(start))
    seg = cache.get(key)
    if seg is None:
      seg = cache[key] = mixing.anchor_crop(_waveform(self.source, clip), start, self.segment_samples)
      if len(cache) > self._CACHE:
        cache.popitem(last=False)
    return seg

  def mix(self, recipe: Mapping[str, Any], normalize: bool | None = None) -> dict[str, Any]:
    """Loads and mixes the two segments of a recipe (see ``mixing.mix_pair`` for the outputs)."""
    target = self.segment(recipe["target_clip"], recipe["target_start"])
    interferer = self.segment(recipe["interferer_clip"], recipe["interferer_start"])
    return mixing.mix_pair(target, interferer, self.normalize if normalize is None else normalize,
                           return_interferer=self.with_interferer)

  def __getstate__(self):
    state = dict(self.__dict__)
    del state["_local"]  # thread-local caches stay in their process
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._local = threading.local()

  def __call__(self, n: int, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    del rng  # the balanced sampler is the only randomness
    recipe = self.recipe(n)
    mixed = self.mix(recipe)
    out = {"mixture": mixed["mixture"], "target": mixed["target"],
           "class_id": np.int32(recipe["class_id"]), "interferer_class_id": np.int32(recipe["interferer_class_id"]),
           "target_clip": np.int32(recipe["target_clip"]), "ratio": np.float32(mixed["ratio"])}
    if self.with_interferer:
      out["interferer"] = mixed["interferer"]
    return out


def separation_train_iterator(source: Any, anchor_index: AnchorIndex, *, segment_samples: int, global_batch: int,
                              seed: int, process_index: int, process_count: int, num_workers: int = 0,
                              normalize: bool = True, with_interferer: bool = False) -> grain.DatasetIterator:
  """Infinite USS training batches (this process's rows), see ``SeparationElements``.

  Returns:
    iterator of dicts: ``mixture``, ``target`` (b, segment_samples) float32 (the target segment doubles as the
    oracle query); ``class_id``, ``interferer_class_id``, ``target_clip`` (b,) int32; ``ratio`` (b,) float32, the
    energy-matching gain r; ``interferer`` (b, segment_samples) float32 when ``with_interferer``.
  """
  elements = SeparationElements(source, anchor_index, segment_samples=segment_samples, seed=seed,
                                normalize=normalize, with_interferer=with_interferer)
  return host_sharded_generated_iterator(elements, global_batch=global_batch, seed=seed,
                                         process_index=process_index, process_count=process_count,
                                         num_workers=num_workers)


_SEPARATION_RECIPE = ("class_id", "interferer_class_id", "target_clip", "interferer_clip", "target_start",
                      "interferer_start")


class OnlineSeparationClips(SeparationElements):
  """Element ``n`` of the online-anchor separation stream: the two whole clips of ``SeparationElements``'s pair.

  Same class-balanced pairing (``recipe``) over the rows of an anchor index (one row per (clip, class) pair; its
  segment starts are not used), but the element holds the first ``clip_samples`` samples of each clip (zero-padded),
  so that the anchor segments are cut inside the jitted train step by the query net itself
  (``anchors.online_anchor_segments``) and mixed there (``mixing.mix_pairs``), as bytedance/uss trains.

  Returns (per element): ``target_clip``, ``interferer_clip`` (clip_samples,) float32; ``target_samples``,
  ``interferer_samples`` int32 (valid samples before the padding); ``class_id``, ``interferer_class_id`` int32.
  """

  def __init__(self, source: Any, anchor_index: AnchorIndex, *, clip_samples: int, seed: int):
    super().__init__(source, anchor_index, segment_samples=anchor_index.segment_samples, seed=seed)
    self.clip_samples = int(clip_samples)

  def __call__(self, n: int, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    del rng
    recipe = self.recipe(n)
    out = {"class_id": np.int32(recipe["class_id"]), "interferer_class_id": np.int32(recipe["interferer_class_id"])}
    for kind in ("target", "interferer"):
      wav = _waveform(self.source, recipe[f"{kind}_clip"])
      out[f"{kind}_clip"] = mixing.anchor_crop(wav, 0, self.clip_samples)
      out[f"{kind}_samples"] = np.int32(min(wav.shape[0], self.clip_samples))
    return out


def separation_online_train_iterator(source: Any, anchor_index: AnchorIndex, *, clip_samples: int,
                                     global_batch: int, seed: int, process_index: int, process_count: int,
                                     num_workers: int = 0) -> grain.DatasetIterator:
  """Infinite batches of ``OnlineSeparationClips`` (class-balanced pairs of whole clips; anchors cut in the step)."""
  return host_sharded_generated_iterator(OnlineSeparationClips(source, anchor_index, clip_samples=clip_samples,
                                                               seed=seed),
                                         global_batch=global_batch, seed=seed, process_index=process_index,
                                         process_count=process_count, num_workers=num_workers)


def separation_eval_set(source: Any, anchor_index: AnchorIndex, *, pairs_per_class: int, seed: int,
                        segment_samples: int, normalize: bool = False,
                        with_audio: bool = True) -> dict[str, np.ndarray]:
  """The fixed USS evaluation set, built the bytedance/uss way (``evaluation/dataset_creation/audioset.py``).

  The reference runs the training sampler and mixer until every class has ``pairs_per_class`` mixtures (100 per
  class for AudioSet: 52,700). With the balanced queue the first ``pairs_per_class * K`` elements hold exactly
  ``pairs_per_class`` targets of each of the K classes, so the set is elements ``0 .. pairs_per_class * K - 1`` of
  ``SeparationElements(seed)``, ordered by class (then element order). Mixtures are not peak-normalised by default
  (the reference writes the mixer's output); SDR is invariant to a common scale of estimate and reference.

  Args:
    source, anchor_index, segment_samples: as in ``SeparationElements``.
    pairs_per_class: mixtures per class.
    seed: sampler seed (use one that differs from training's).
    normalize: apply seed 000 Eq. (2) to the stored audio.
    with_audio: also store the audio (N x segment_samples x 4 bytes per array: 27 GB for AudioSet's 52,700 pairs of
      2 s at 32 kHz); without it the set is the recipe only, turned into audio batch by batch by
      ``eval_set_batches(..., source=...)``.
  Returns:
    dict of arrays with leading axis N = pairs_per_class * K: ``class_id``, ``interferer_class_id``,
    ``target_clip``, ``interferer_clip``, ``target_start``, ``interferer_start`` int32 (jax-ready);
    ``ratio`` float32, ``mixture``, ``target`` (N, segment_samples) float32 when ``with_audio``; 0-d
    ``segment_samples``, ``normalize``, ``seed``.
  """
  elements = SeparationElements(source, anchor_index, segment_samples=segment_samples, seed=seed,
                                normalize=normalize)
  n = pairs_per_class * elements.sampler.num_classes
  recipes = [elements.recipe(i) for i in range(n)]
  order = sorted(range(n), key=lambda i: recipes[i]["class_id"])  # stable: element order within a class
  out = {k: np.array([recipes[i][k] for i in order], np.int32) for k in _SEPARATION_RECIPE}
  out.update(segment_samples=np.int64(segment_samples), normalize=np.bool_(normalize), seed=np.int64(seed))
  if with_audio:
    mixed = [elements.mix(recipes[i]) for i in order]
    out["ratio"] = np.array([m["ratio"] for m in mixed], np.float32)
    out["mixture"] = np.stack([m["mixture"] for m in mixed])
    out["target"] = np.stack([m["target"] for m in mixed])
  return out


def separation_eval_audio(source: Any, eval_set: Mapping[str, np.ndarray],
                          rows: Sequence[int]) -> dict[str, np.ndarray]:
  """Rebuilds ``mixture`` / ``target`` (len(rows), segment_samples) of recipe rows of a USS eval set from ``source``.
  """
  rows = list(rows)
  seg = int(eval_set["segment_samples"])
  normalize = bool(eval_set["normalize"])
  mixed = []
  for r in rows:
    target = mixing.anchor_crop(_waveform(source, eval_set["target_clip"][r]), eval_set["target_start"][r], seg)
    interferer = mixing.anchor_crop(_waveform(source, eval_set["interferer_clip"][r]),
                                    eval_set["interferer_start"][r], seg)
    mixed.append(mixing.mix_pair(target, interferer, normalize, return_interferer=False))
  return {"mixture": np.stack([m["mixture"] for m in mixed]), "target": np.stack([m["target"] for m in mixed])}


class _Rows:
  """The arrays (ndim >= 1) of a dict as a random-access sequence of per-row dicts (0-d entries are left out)."""

  def __init__(self, arrays: Mapping[str, np.ndarray]):
    self.arrays = {k: v for k, v in arrays.items() if np.ndim(v) >= 1}
    self.n = len(next(iter(self.arrays.values())))

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return {k: v[i] for k, v in self.arrays.items()}


def eval_set_batches(eval_set: Mapping[str, np.ndarray], *, global_batch: int, process_index: int,
                     process_count: int, source: Any = None) -> Iterator[dict[str, np.ndarray]]:
  """Every row of an eval set once, in order, as this process's rows of padded global batches (with ``mask``).

  A USS eval set stored without audio (``separation_eval_set(with_audio=False)``) gets its ``mixture`` / ``target``
  rebuilt from ``source`` batch by batch.
  """
  rows = _Rows(eval_set)
  batches = host_sharded_eval_batches(rows, lambda e: dict(e), global_batch=global_batch,
                                      process_index=process_index, process_count=process_count)
  if "mixture" in eval_set or source is None:
    yield from batches
    return
  n = len(rows)
  per_host = global_batch // process_count
  for b, batch in enumerate(batches):
    start = b * global_batch + process_index * per_host
    idx = [i if i < n else 0 for i in range(start, start + per_host)]
    batch.update(separation_eval_audio(source, eval_set, idx))
    yield batch


def save_eval_set(path: str, eval_set: Mapping[str, np.ndarray], settings: Mapping[str, Any] | None = None) -> None:
  """Writes an eval set (dict of numpy arrays, no objects) to ``path`` (local or URL) as an uncompressed ``.npz``,
  atomically (temporary name + rename, ``uss_jax.io``); ``settings`` (JSON-able: the values that determine the set,
  e.g. pairs per class, seed, segment length, the anchor index's identity) are stored with it (``settings_json``)."""
  arrays = {k: np.asarray(v) for k, v in eval_set.items()}
  if settings is not None:
    arrays[SETTINGS_KEY] = np.array(json.dumps(dict(settings), sort_keys=True, default=_json_default))
  io.save_npz_atomic(path, **arrays)


def load_eval_set(path: str, settings: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
  """Reads an eval set written by ``save_eval_set`` (no pickle); with ``settings``, refuses one built otherwise.

  Raises:
    FileNotFoundError: no file. uss_jax.io.StoredSettingsError (a ValueError): ``settings`` given and the file was
      built with other values (the message names the file and each differing setting) or records none.
  """
  data = io.load_npz(path)
  stored = data.pop(SETTINGS_KEY, None)
  if settings is not None:
    if stored is None:
      raise io.StoredSettingsError(f"{path}: the evaluation set records no build settings (written by an older "
                                   "version); delete it to rebuild it")
    io.check_settings(path, json.loads(str(stored)), json.loads(json.dumps(dict(settings), default=_json_default)),
                      what="evaluation set")
  return data


def stored_eval_set(path: str, build: Callable[[], Mapping[str, np.ndarray]],
                    settings: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The eval set at ``path`` as every process sees it: built by process 0 with ``build()`` and saved with its
  ``settings`` when missing, then a barrier, then loaded (settings checked) by every process.

  Raises:
    uss_jax.io.StoredSettingsError: the stored set was built with other settings.
  """
  return io.build_or_load(f"eval_set:{path}", path, build, lambda p, v: save_eval_set(p, v, settings),
                          lambda p: load_eval_set(p, settings))


def _json_default(v: Any) -> Any:
  if hasattr(v, "tolist"):
    return v.tolist()
  raise TypeError(f"eval-set setting {v!r} is not JSON-able")
