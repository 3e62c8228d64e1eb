"""SED anchor segments: for each (clip, class) the window where a sound event detector is most confident.

The anchor index is the contract between anchor mining (this module) and the separation pipelines
(``data_pipelines.pipelines``): see ``AnchorIndex``.

The rule (bytedance/uss ``uss/data/anchor_segment_detectors.py``, ``AnchorSegmentDetector`` with
``detect_mode='max_area'`` and ``AnchorSegmentScorer``; Kong et al., "Universal Source Separation with Weakly Labelled
Data", 2023, Sec. 3.2): take the detector's framewise probability ``p[t]`` of the class, replicate-pad
``half = segment_frames // 2`` frames on each side, filter with a box of ``2 * half + 1`` frames (the mean probability
of the window centred on each frame), take the first argmax, clamp it to ``[half, frames - 1 - half]`` and cut frames
``[centre - half, centre + half)``, i.e. samples ``[(centre - half) * hop, (centre + half) * hop)``. No thresholds.
At 32 kHz, hop 320 (100 frames/s), 10 s clips (1001 frames) and 2 s segments: half 100, box 201, centre in
[100, 900], 64,000-sample segments.

Two ways to use it, chosen by the config option ``data.anchors`` (``ANCHOR_MODES``):

* ``'offline'``: ``mine_anchors`` runs the detector once over a whole data source (jitted, batched, sharded over a
  mesh, resumable in chunks, split over hosts) and writes an ``AnchorIndex``; ``load_anchor_index`` reads it back.
* ``'online'``: ``online_anchor_segments`` cuts the anchor segment of a given class inside the jitted train step
  from a framewise output computed there (what bytedance/uss does during training).

Both call the same rule (``anchor_starts``), so they agree exactly on equal inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
import dataclasses
import functools
import hashlib
import io as _bytes_io
import math
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import jax.numpy as jnp
import numpy as np

from uss_jax import io

ANCHOR_MODES = ("offline", "online")
METADATA_FILENAME = "anchors.json"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class AnchorIndex:
  """Anchor segments of one dataset split, one row per (clip, class) pair.

  Attributes:
    clip: (N,) int64, index of the clip in the split's random-access data source.
    label: (N,) int64, class id.
    start: (N,) int64, first sample of the anchor segment (at ``sample_rate``); the segment is
      ``[start, start + segment_samples)`` of the clip, zero-padded past its end.
    score: (N,) float32, the detector's mean framewise probability of ``label`` over the segment.
    segment_samples: segment length in samples (bytedance/uss: 2 s).
    sample_rate: Hz.
  """

  clip: np.ndarray
  label: np.ndarray
  start: np.ndarray
  score: np.ndarray
  segment_samples: int
  sample_rate: int

  def __len__(self) -> int:
    return int(self.clip.shape[0])

  def rows_of_class(self, label: int) -> np.ndarray:
    """Row indices whose class is ``label`` (sorted)."""
    return np.flatnonzero(self.label == label)


def check_anchor_mode(mode: str) -> str:
  """Validates the config option ``data.anchors``.

  Raises:
    ValueError: ``mode`` is not one of ``ANCHOR_MODES`` (``'offline'``, ``'online'``).
  """
  if mode not in ANCHOR_MODES:
    raise ValueError(f"data.anchors must be one of {ANCHOR_MODES}, got {mode!r}")
  return mode


# ---------------------------------------------------------------------------------------------------------------------
# The rule (jnp)
# ---------------------------------------------------------------------------------------------------------------------


def _window_sums(x: jax.Array, width: int) -> jax.Array:
  """``out[:, i] = sum(x[:, i:i + width])`` along axis 1, for ``i in [0, L - width]``.

  Computed by doubling (sums of 2, 4, 8 ... neighbours, then one term per set bit of ``width``): O(log width) adds
  per output, pairwise-summation accuracy, and every output is the same expression of its own window, so two windows
  with equal contents (a saturated plateau, PANNs' 32x-repeated segments) give bitwise-equal sums and the argmax
  keeps the reference's first-maximum tie-breaking. (A cumsum difference would not: its rounding depends on the
  position.)

  Args:
    x: ``(batch, L, classes)``.
    width: window length, ``1 <= width <= L``.

  Returns:
    ``(batch, L - width + 1, classes)``.
  """
  length = x.shape[1]
  out_len = length - width + 1
  levels = [x]  # levels[k][:, i] = sum(x[:, i:i + 2**k])
  while 2 ** len(levels) <= width:
    prev, step = levels[-1], 2 ** (len(levels) - 1)
    levels.append(prev[:, :-step] + prev[:, step:])
  total, offset = None, 0
  for k in reversed(range(len(levels))):
    if width & (1 << k):
      term = levels[k][:, offset:offset + out_len]
      total = term if total is None else total + term
      offset += 1 << k
  return total


def _anchor_rule(prob: jax.Array, segment_frames: int, hop_samples: int,
                 num_frames: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  batch, frames, _ = prob.shape
  half = int(segment_frames) // 2
  width = 2 * half + 1
  if num_frames is None:
    n = jnp.full((batch,), frames, jnp.int32)
  else:
    n = jnp.clip(jnp.asarray(num_frames, jnp.int32).reshape(batch), 1, frames)
  prob = prob.astype(jnp.float32)
  # Replicate padding at both ends of the VALID frames: frame j of the padded curve is p[clip(j - half, 0, n - 1)];
  # frames at or past n (batch padding) are never read.
  src = jnp.clip(jnp.arange(frames + 2 * half)[None, :] - half, 0, n[:, None] - 1)
  padded = jnp.take_along_axis(prob, src[:, :, None], axis=1)  # (batch, frames + 2 half, classes)
  sums = _window_sums(padded, width)  # (batch, frames, classes): box centred on each frame
  valid = jnp.arange(frames)[None, :] < n[:, None]
  best = jnp.argmax(jnp.where(valid[:, :, None], sums, -jnp.inf), axis=1)  # (batch, classes); first maximum
  hi = jnp.maximum(n - 1 - half, half)[:, None]  # clips shorter than the box: centre = half, start 0
  centre = jnp.clip(best, half, hi)
  long_score = jnp.take_along_axis(sums, centre[:, None, :], axis=1)[:, 0] / width
  # Short clips: mean over the valid frames, reduced over a fixed `width` frames so that the result does not depend
  # on how much batch padding follows the clip.
  head = jnp.pad(prob, ((0, 0), (0, max(0, width - frames)), (0, 0)))[:, :width]
  head_valid = (jnp.arange(width)[None, :] < n[:, None])[:, :, None]
  masked_mean = jnp.sum(jnp.where(head_valid, head, 0.0), axis=1) / n[:, None].astype(jnp.float32)
  score = jnp.where((n >= width)[:, None], long_score, masked_mean)
  start = (centre - half) * int(hop_samples)
  return start.astype(jnp.int32), score.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("segment_frames", "hop_samples"))
def anchor_starts(framewise_prob: jax.Array, segment_frames: int, hop_samples: int,
                  num_frames: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """The anchor segment of every class of every clip (bytedance/uss ``max_area`` rule, vectorised over classes).

  For clip ``b`` with ``n = num_frames[b]`` valid frames and class ``c``: ``q[j] = p[clip(j - half, 0, n - 1)]``
  (replicate padding), ``box[t] = sum(q[t : t + 2 half + 1])`` for ``t in [0, n)``, ``t* =`` first argmax,
  ``centre = clip(t*, half, n - 1 - half)``, ``start = (centre - half) * hop_samples``.
  Clips shorter than the box (``n < 2 half + 1``) get ``start = 0`` (the segment is zero-padded past the clip's end
  by whoever cuts it). Frames at or past ``n`` (padding added to batch clips of different lengths) are never read, so
  they cannot win the argmax.

  Args:
    framewise_prob: ``(batch, frames, classes)`` framewise class probabilities in [0, 1].
    segment_frames: segment length in frames (2 s at 100 frames/s: 200; bytedance/uss passes 201, which gives the same
      ``half = segment_frames // 2 = 100``). The cut segment is ``2 * half`` frames long.
    hop_samples: detector frame hop in samples (320 at 32 kHz).
    num_frames: ``(batch,)`` int, valid frames per clip (None: all ``frames``); clipped to ``[1, frames]``.

  Returns:
    ``start_sample`` ``(batch, classes)`` int32: first sample of the segment, ``(centre - half) * hop_samples``;
    ``score`` ``(batch, classes)`` float32: mean probability over the ``2 half + 1`` frames centred on ``centre``
    (the reference's smoothed curve at the chosen frame); for clips shorter than the box, the mean over the clip's
    valid frames.
  """
  return _anchor_rule(framewise_prob, segment_frames, hop_samples, num_frames)


@functools.partial(jax.jit, static_argnames=("segment_samples", "hop"))
def online_anchor_segments(framewise_prob: jax.Array, waveform: jax.Array, class_ids: jax.Array,
                           segment_samples: int, hop: int, num_frames: jax.Array | None = None) -> jax.Array:
  """Cuts each clip's anchor segment of its given class inside the jitted graph (bytedance/uss online mining).

  ``segment_frames = segment_samples // hop``; the start is ``anchor_starts`` for class ``class_ids[b]`` and the
  segment is ``waveform[b, start : start + segment_samples]``, zero-padded past the clip's end (``jax.lax.
  dynamic_slice`` per example on the zero-extended waveform).

  Args:
    framewise_prob: ``(batch, frames, classes)`` detector output for ``waveform``.
    waveform: ``(batch, samples)`` float32.
    class_ids: ``(batch,)`` int, the class to cut for each clip.
    segment_samples: segment length in samples (64,000 = 2 s at 32 kHz).
    hop: detector frame hop in samples (320).
    num_frames: ``(batch,)`` valid frames per clip (None: all).

  Returns:
    ``segments`` ``(batch, segment_samples)``, the waveform's dtype.
  """
  class_ids = jnp.asarray(class_ids, jnp.int32).reshape(-1)
  prob = jnp.take_along_axis(framewise_prob, class_ids[:, None, None], axis=2)  # (batch, frames, 1)
  start, _ = _anchor_rule(prob, segment_samples // hop, hop, num_frames)
  padded = jnp.pad(waveform, ((0, 0), (0, segment_samples)))
  return jax.vmap(lambda w, s: jax.lax.dynamic_slice(w, (s,), (segment_samples,)))(padded, start[:, 0])


# ---------------------------------------------------------------------------------------------------------------------
# Offline mining
# ---------------------------------------------------------------------------------------------------------------------


class MissingChunksError(FileNotFoundError):
  """``load_anchor_index`` found chunk files missing (``.missing``: the chunk indices)."""

  def __init__(self, out_dir: str, missing: Sequence[int], num_chunks: int):
    self.missing = list(missing)
    super().__init__(f"{out_dir}: {len(self.missing)} of {num_chunks} anchor chunks missing "
                     f"({_ranges(self.missing)}); run mine_anchors again (on every process) to finish them")


def _ranges(ids: Sequence[int]) -> str:
  parts, ids = [], sorted(ids)
  i = 0
  while i < len(ids):
    j = i
    while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
      j += 1
    parts.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
    i = j + 1
  return ", ".join(parts)


def chunk_path(out_dir: str, k: int, num_chunks: int) -> str:
  """``out_dir/chunk_<k>-of-<num_chunks>.npz`` (``out_dir`` a local path or a URL)."""
  return io.join(out_dir, f"chunk_{k:05d}-of-{num_chunks:05d}.npz")


def _atomic_write(path: str, write: Callable[[Any], None]) -> None:
  """``write(file object)`` into memory, then ``io.write_bytes_atomic`` (temporary name + rename; URLs too)."""
  buf = _bytes_io.BytesIO()
  write(buf)
  io.write_bytes_atomic(path, buf.getvalue())


def _module_parts(detector: Any):
  from flax import nnx  # pylint: disable=import-outside-toplevel
  if isinstance(detector, nnx.Module):
    graphdef, state = nnx.split(detector)
    return graphdef, state
  return None, None


@functools.lru_cache(maxsize=16)
def _detector_fn(graphdef: Any, fn: Any, output_key: str) -> Callable[[Any, jax.Array], jax.Array]:
  """``(state, waveform) -> framewise (batch, frames, classes)``; cached so repeated runs reuse compilations."""
  if graphdef is not None:
    from flax import nnx  # pylint: disable=import-outside-toplevel

    def call(state, waveform):
      model = nnx.merge(graphdef, state)
      model.eval()
      return model(waveform)[output_key]
  else:
    def call(state, waveform):
      del state
      return fn(waveform)[output_key]
  return call


@functools.lru_cache(maxsize=16)
def _mining_step(graphdef: Any, fn: Any, output_key: str, segment_frames: int, hop: int, frame_offset: int):
  call = _detector_fn(graphdef, fn, output_key)

  def step(state, waveform, lengths):
    prob = call(state, waveform)
    frames = prob.shape[1]
    n = jnp.clip(lengths // hop + frame_offset, 1, frames)
    return _anchor_rule(prob, segment_frames, hop, n)

  return jax.jit(step)


def _probe_frames(graphdef, fn, output_key, state, length: int) -> tuple[int, int]:
  call = _detector_fn(graphdef, fn, output_key)
  out = jax.eval_shape(call, state, jax.ShapeDtypeStruct((1, length), jnp.float32))
  if len(out.shape) != 3:
    raise ValueError(f"detector output {output_key!r} must be (batch, frames, classes), got shape {out.shape}")
  return int(out.shape[1]), int(out.shape[2])


def _frame_layout(graphdef, fn, output_key, state, probe_samples: int,
                  hop_samples: int | None) -> tuple[int, int, int]:
  """(hop, frame_offset, classes): the detector gives ``samples // hop + frame_offset`` frames for a clip."""
  l1, l2 = probe_samples, 2 * probe_samples
  f1, classes = _probe_frames(graphdef, fn, output_key, state, l1)
  if hop_samples is None:
    f2, _ = _probe_frames(graphdef, fn, output_key, state, l2)
    if f2 <= f1 or (l2 - l1) % (f2 - f1):
      raise ValueError(f"cannot infer the detector's frame hop: {l1} samples -> {f1} frames, {l2} -> {f2}; "
                       "pass hop_samples=")
    hop_samples = (l2 - l1) // (f2 - f1)
  return int(hop_samples), f1 - l1 // int(hop_samples), classes


def _state_digest(state: Any) -> str | None:
  """sha256 of the detector's weights (None when not all are addressable here, or not a module)."""
  if state is None:
    return None
  digest = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(state)[0], key=lambda kv: jax.tree_util.keystr(kv[0])):
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      return None
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    arr = np.asarray(leaf)
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(str((arr.shape, arr.dtype.str)).encode())
    digest.update(np.ascontiguousarray(arr).tobytes())
  return digest.hexdigest()


def _local_mesh(mesh: Mesh) -> Mesh:
  """``mesh`` itself when all its devices belong to this process, else this process's devices along ``data``."""
  if all(d.process_index == jax.process_index() for d in mesh.devices.flat):
    return mesh
  from uss_jax.train import sharding  # pylint: disable=import-outside-toplevel
  return sharding.create_mesh({"data": -1}, jax.local_devices())


def _as_waveform(waveform: Any) -> np.ndarray:
  w = np.asarray(waveform)
  if w.ndim != 1:
    raise ValueError(f"waveform must be (samples,), got shape {w.shape}")
  return w


def _to_float(w: np.ndarray) -> np.ndarray:
  if w.dtype == np.int16:
    return w.astype(np.float32) / 32768.0
  return w.astype(np.float32, copy=False)


def _positive_labels(labels: Any, num_classes: int) -> np.ndarray:
  lab = np.asarray(labels)
  if lab.ndim == 0:  # a single class id (e.g. labels_key='label')
    ids = np.asarray([int(lab)])
  elif lab.shape == (num_classes,):
    ids = np.flatnonzero(lab)
  else:
    raise ValueError(f"labels must be multi-hot ({num_classes},) or one class id, got shape {lab.shape}")
  if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
    raise ValueError(f"class ids {ids.tolist()} outside the detector's {num_classes} classes")
  return ids.astype(np.int64)


def _read(source: Any, indices: Sequence[int]) -> list[Mapping[str, Any]]:
  getitems = getattr(source, "__getitems__", None)
  if getitems is not None:
    return list(getitems(list(indices)))
  return [source[i] for i in indices]


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def mine_anchors(detector: Any, source: Any, *, labels_key: str = "labels", waveform_key: str = "waveform",
                 sample_rate: int, segment_seconds: float = 2.0, batch_size: int, mesh: Mesh | None = None,
                 out_dir: str, process_index: int | None = None, process_count: int | None = None,
                 chunk_size: int = 512, hop_samples: int | None = None, output_key: str = "framewise_output",
                 pad_multiple: int | None = None, detector_name: str | None = None) -> AnchorIndex:
  """Mines the anchor segment of every positive label of every clip of ``source``; resumable, split over hosts.

  The detector runs jitted in eval mode on batches of ``batch_size`` clips; with a ``mesh`` the batch is sharded over
  its batch axes (``uss_jax.train.sharding.batch_sharding``, default data x fsdp) and the weights are replicated. A
  mesh that spans several processes is replaced by this process's devices along ``data``: hosts mine disjoint chunks
  independently (no collectives), so none waits for another and each resumes on its own.

  Work is cut into ``num_chunks = ceil(len(source) / chunk_size)`` chunks of consecutive clips; process ``p`` of ``P``
  mines chunks ``k`` with ``k % P == p`` and skips those already on disk. Each chunk is written atomically to
  ``chunk_path(out_dir, k, num_chunks)`` (temporary file + rename) holding this chunk's rows (clip, label, start,
  score), sorted by (clip, label); each chunk file is written by the process that mined it. Settings go to
  ``out_dir/anchors.json``, written by process 0 (then a barrier); a rerun into the same ``out_dir`` must use the same
  settings (``uss_jax.io.StoredSettingsError``, a ``ValueError``, names the file and each differing setting).
  ``out_dir`` may be a URL (``gs://``): every file goes through ``uss_jax.io`` (epath).

  Within a chunk clips are sorted by length and each batch is zero-padded to its longest clip, rounded up to
  ``pad_multiple`` samples (and at least one segment) to bound the number of compiled shapes; the padded frames are
  masked out of the rule (``anchor_starts(num_frames=...)``). The detector sees the padding, so its output in the
  last frames of a clip can differ slightly from running the clip alone (receptive field); zeros also pad the last
  batch, whose extra rows are dropped.

  The frame hop is inferred from the detector's output length at two probe lengths (``hop_samples`` overrides it):
  a clip of ``m`` samples has ``m // hop + offset`` valid frames (Cnn14: hop 320 at 32 kHz, offset 1).

  Args:
    detector: ``waveform (batch, samples) float32 -> dict`` with ``output_key`` ``(batch, frames, classes)``
      probabilities, e.g. ``uss_jax.models.cnn14.Cnn14``. An ``nnx.Module`` is split, its weights passed to the
      jitted step and a merged copy put in eval mode; any other callable is traced as is.
    source: random-access data source (``len`` and ``[i]``, optionally ``__getitems__``; e.g.
      ``tfds.data_source``) of dicts with ``waveform_key`` ``(samples,)`` int16 (scaled by 1/32768) or float32 at
      ``sample_rate``, and ``labels_key``: multi-hot ``(classes,)`` or a single class id.
    labels_key, waveform_key: element keys.
    sample_rate: Hz of the waveforms (and of ``AnchorIndex.start``).
    segment_seconds: anchor segment length (2 s); ``segment_samples = round(segment_seconds * sample_rate)`` and the
      rule uses ``segment_frames = segment_samples // hop``.
    batch_size: clips per jitted call; a multiple of the mesh's batch shards.
    mesh: ``uss_jax.train.sharding.create_mesh`` mesh (None: one device, default placement).
    out_dir: folder for the chunks and ``anchors.json`` (created).
    process_index, process_count: this host's share of the chunks (default ``jax.process_index()`` /
      ``jax.process_count()``).
    chunk_size: clips per chunk file (the unit of resumption).
    hop_samples: detector frame hop in samples (None: inferred).
    output_key: detector output holding the framewise probabilities.
    pad_multiple: batch length granularity in samples (None: half a second).
    detector_name: recorded in the metadata (None: the class or function name).

  Returns:
    The ``AnchorIndex`` of this process's chunks (all chunks when ``process_count == 1``); after every process has
    finished, ``load_anchor_index(out_dir)`` gives the whole index.

  Raises:
    ValueError: empty source, bad batch size / process split, a detector whose output is not (batch, frames, classes)
      or whose hop cannot be inferred, labels that do not match its classes, or ``out_dir`` holding a run with
      different settings.
  """
  from uss_jax.train import sharding  # pylint: disable=import-outside-toplevel

  num_clips = len(source)
  if num_clips == 0:
    raise ValueError("mine_anchors: the data source is empty")
  process_index = jax.process_index() if process_index is None else int(process_index)
  process_count = jax.process_count() if process_count is None else int(process_count)
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
  if chunk_size < 1 or batch_size < 1:
    raise ValueError(f"chunk_size ({chunk_size}) and batch_size ({batch_size}) must be positive")
  segment_samples = int(round(segment_seconds * sample_rate))
  pad_multiple = int(pad_multiple or max(1, sample_rate // 2))

  graphdef, state = _module_parts(detector)
  fn = None if graphdef is not None else detector
  hop, frame_offset, num_classes = _frame_layout(graphdef, fn, output_key, state, max(segment_samples, sample_rate),
                                                 hop_samples)
  segment_frames = segment_samples // hop
  if segment_frames < 1:
    raise ValueError(f"segment of {segment_samples} samples is shorter than the detector hop {hop}")

  digest = _state_digest(state)
  if mesh is not None:
    mesh = _local_mesh(mesh)
    batch_shard = sharding.batch_sharding(mesh)
    divisor = sharding.batch_divisor(mesh)
    if batch_size % divisor:
      raise ValueError(f"batch_size {batch_size} must be a multiple of the mesh's {divisor} batch shards")
    if state is not None:
      state = jax.device_put(state, NamedSharding(mesh, P()))
  elif state is not None:
    state = jax.device_put(state)

  num_chunks = math.ceil(num_clips / chunk_size)
  metadata = {
      "format_version": FORMAT_VERSION,
      "sample_rate": int(sample_rate),
      "segment_samples": segment_samples,
      "segment_frames": segment_frames,
      "hop_samples": hop,
      "frames_per_second": sample_rate / hop,
      "frame_offset": frame_offset,
      "num_classes": num_classes,
      "detector": detector_name or getattr(detector, "__name__", type(detector).__name__),
      "detector_sha256": digest,
      "output_key": output_key,
      "labels_key": labels_key,
      "num_clips": num_clips,
      "chunk_size": int(chunk_size),
      "num_chunks": num_chunks,
  }
  meta_path = io.join(out_dir, METADATA_FILENAME)

  def write_metadata():
    if not io.exists(meta_path):
      io.write_json_atomic(meta_path, metadata)

  if jax.process_count() > 1:
    io.write_on_process0(f"anchors_metadata:{out_dir}", write_metadata)
  else:  # one process (or hosts simulated by process_index / process_count): the first to arrive writes it
    write_metadata()
  io.check_settings(meta_path, io.read_json(meta_path), metadata, what="anchor index",
                    remedy="use a fresh out_dir (or delete this one) to mine again")

  step = _mining_step(graphdef, fn, output_key, segment_frames, hop, frame_offset)

  def run_batch(waves: list[np.ndarray]):
    length = max(segment_samples, max(w.shape[0] for w in waves))
    length = _round_up(length, pad_multiple)
    batch = np.zeros((batch_size, length), np.float32)
    lengths = np.zeros((batch_size,), np.int32)
    for r, w in enumerate(waves):
      batch[r, :w.shape[0]] = _to_float(w)
      lengths[r] = w.shape[0]
    if mesh is not None:
      arrays = sharding.make_global_batch({"w": batch, "n": lengths}, batch_shard)
      return step(state, arrays["w"], arrays["n"])
    return step(state, jnp.asarray(batch), jnp.asarray(lengths))

  mine = [k for k in range(num_chunks) if k % process_count == process_index]
  for k in mine:
    path = chunk_path(out_dir, k, num_chunks)
    if io.exists(path):
      continue
    ids = list(range(k * chunk_size, min((k + 1) * chunk_size, num_clips)))
    elements = _read(source, ids)
    waves = [_as_waveform(e[waveform_key]) for e in elements]  # converted to float32 batch by batch
    positives = [_positive_labels(e[labels_key], num_classes) for e in elements]
    order = sorted(range(len(ids)), key=lambda i: waves[i].shape[0])  # stable: equal lengths keep clip order
    rows: list[tuple[np.ndarray, ...]] = []
    pending = None
    for b0 in range(0, len(order), batch_size):
      members = order[b0:b0 + batch_size]
      result = (members, run_batch([waves[i] for i in members]))  # dispatched asynchronously
      if pending is not None:
        rows.append(_collect(*pending, ids, positives))
      pending = result
    rows.append(_collect(*pending, ids, positives))
    clip, label, start, score = (np.concatenate(c) for c in zip(*rows))
    order_rows = np.lexsort((label, clip))
    arrays = {"clip": clip[order_rows], "label": label[order_rows], "start": start[order_rows],
              "score": score[order_rows]}
    _atomic_write(path, lambda f, a=arrays: np.savez(f, **a))
  return load_anchor_index(out_dir, chunks=mine)


def _collect(members: list[int], outputs, ids: list[int], positives: list[np.ndarray]):
  start, score = (np.asarray(o) for o in outputs)
  clip, label, st, sc = [], [], [], []
  for r, i in enumerate(members):
    pos = positives[i]
    clip.append(np.full(pos.shape, ids[i], np.int64))
    label.append(pos)
    st.append(start[r, pos].astype(np.int64))
    sc.append(score[r, pos].astype(np.float32))
  return (np.concatenate(clip), np.concatenate(label), np.concatenate(st), np.concatenate(sc))


def read_anchor_metadata(out_dir: str) -> dict[str, Any]:
  """The settings ``mine_anchors`` recorded in ``out_dir/anchors.json``.

  Raises:
    FileNotFoundError: no anchors were mined into ``out_dir``.
  """
  path = io.join(out_dir, METADATA_FILENAME)
  if not io.exists(path):
    raise FileNotFoundError(f"{out_dir}: no {METADATA_FILENAME}; mine anchors with mine_anchors first")
  return io.read_json(path)


def load_anchor_index(out_dir: str, chunks: Iterable[int] | None = None) -> AnchorIndex:
  """Merges the chunk files of ``mine_anchors`` into one ``AnchorIndex`` (rows sorted by clip, then label).

  Args:
    out_dir: the ``mine_anchors`` output folder.
    chunks: chunk indices to load (None: all ``num_chunks``).

  Raises:
    FileNotFoundError: no metadata in ``out_dir``.
    MissingChunksError (a FileNotFoundError): some requested chunks are not written yet (listed in the message).
  """
  meta = read_anchor_metadata(out_dir)
  num_chunks = int(meta["num_chunks"])
  wanted = sorted(set(range(num_chunks) if chunks is None else (int(k) for k in chunks)))
  missing = [k for k in wanted if not io.exists(chunk_path(out_dir, k, num_chunks))]
  if missing:
    raise MissingChunksError(out_dir, missing, num_chunks)
  parts = {"clip": [], "label": [], "start": [], "score": []}
  for k in wanted:
    data = io.load_npz(chunk_path(out_dir, k, num_chunks))
    for name, part in parts.items():
      part.append(data[name])
  dtypes = {"clip": np.int64, "label": np.int64, "start": np.int64, "score": np.float32}
  arrays = {name: (np.concatenate(part) if part else np.zeros((0,))).astype(dtypes[name])
            for name, part in parts.items()}
  order = np.lexsort((arrays["label"], arrays["clip"]))
  return AnchorIndex(**{name: a[order] for name, a in arrays.items()},
                     segment_samples=int(meta["segment_samples"]), sample_rate=int(meta["sample_rate"]))
