r"""Query-based separation of audio files of any length with a trained separation run (``uss-jax separate``).

    sep = Separator.from_workdir("/runs/uss")                          # latest checkpoint of a separation run
    condition = sep.embed_query_audio(["dog1.wav", "dog2.wav"])        # or sep.class_condition("Dog")
    estimate = sep.separate(waveform, 44100, condition)                # (samples,) at 44.1 kHz
    separate_file(sep, "mix.flac", "dog.wav", query_class="Dog", plot="dog.png")

Pipeline (one pass, streaming, so host and device memory stay bounded whatever the file length):

1. The mixture is read in blocks with soundfile (any format libsndfile reads), mixed to mono (mean over channels) and
   resampled to the model's rate ``config.data.sample_rate`` with a streaming soxr HQ resampler (bit-identical to a
   one-shot ``soxr.resample`` of the whole signal).
2. Chunking with 50 % overlap-add: the signal (with ``hop = chunk / 2`` zeros in front) is cut into chunks of
   ``chunk`` samples every ``hop`` samples, enough of them that every input sample lies in exactly two chunks; each
   chunk goes through the model; each output chunk is multiplied by a periodic Hann window ``w`` and added at its
   position. ``w[n] + w[n + hop] = 1`` (constant overlap-add), so a memoryless model ``y[n] = f(x[n])`` comes out
   unchanged, and the seams between chunks are crossfaded. Chunks go to the device ``batch_size`` at a time through
   ONE jitted function of fixed shape ``(batch_size, chunk)`` (the last batch padded with silent chunks): one compile
   per (architecture, chunk, batch_size), shared by all separators; device memory ~ batch_size chunks. Everything
   runs on the default device (``jax.devices()[0]``).
3. The result is trimmed to the model-rate length, resampled back to the input rate (soxr HQ, streaming) and cut or
   zero-padded to exactly the input length (the two resamplings may differ by a sample).

Query condition (the separator's ``condition`` input, ``(embedding_dim,)``):

* ``embed_query_audio``: each query (file or array) is mono-mixed, resampled to the model rate and cut into segments
  of ``config.data.segment_seconds`` (the query length of training: 2 s); the last, partial segment is completed by
  repeating it (bytedance/uss ``inference.py`` ``calculate_query_emb`` + ``repeat_to_length``). Segments whose RMS is
  below ``SILENCE_DBFS`` (-80 dB re full scale 1.0, i.e. RMS < 1e-4, computed over the segment's own samples) are
  left out; a query with no segment above it is rejected. The query net (the frozen Cnn14 stored in the checkpoint,
  eval mode) embeds each segment; the query's embedding is the mean over its segments and, with several queries, the
  condition is the mean of the per-query means (each query weighs the same, as ``calculate_query_emb``).
* ``class_condition``: the row of ``<workdir>/class_embeddings.npz`` for the class, i.e. the mean query-net embedding
  over that class's training anchor segments (written by ``SeparationTask.prepare``).

Model: rebuilt from the workdir alone: ``checkpoints/<step>/config/metadata`` (the separation run's config),
``query_net_config.json`` (the query net's config, written by ``SeparationTask.prepare``) and the ``model`` subtree of
``checkpoints/<step>/state`` (ResUNet30 + frozen Cnn14, BatchNorm statistics included; the optimizer state is not
read). Output files: mono, at the input's sample rate, 32-bit float (``FLOAT``) by default when the format has it
(no clipping: a separated source may exceed full scale); ``subtype='PCM_16'`` writes 16-bit PCM, clipped to [-1, 1].
The optional spectrogram plot reads the mixture and the result whole.

Source: bytedance/uss ``uss/inference.py`` (segment-wise separation, there with non-overlapping segments of the
training length simply concatenated; query embedding averaged over segments and files) and ``uss/models/resunet.py`` / ``uss/models/query_nets.py``; the
overlap-add is the usual constant-overlap-add STFT synthesis condition (Allen & Rabiner 1977) applied to model
outputs.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

# Re-exported: the streaming file I/O and overlap-add live in uss_jax.audio.streaming.
from uss_jax.audio.streaming import (  # pylint: disable=unused-import
    READ_BLOCK_SECONDS, _clips, _counted, _match_length, _sf, audio_info, check_mixture, hann_window, output_format,
    overlap_add, plot_spectrograms, read_blocks, read_mono, resample_stream, spectrogram_db)

from uss_jax.tasks.separation import build_separation_model  # pylint: disable=unused-import
from uss_jax.train import checkpoint as checkpoint_lib
from uss_jax.train.checkpoint import restore_model_tree  # pylint: disable=unused-import  (re-exported)

SILENCE_DBFS = -80.0  # a query segment whose RMS (dB re 1.0) is below this is silent
DEFAULT_CHUNK_SEGMENTS = 2  # default chunk = 2 x config.data.segment_seconds (4 s for the recipes)
DEFAULT_BATCH_SIZE = 8  # chunks per device call
QUERY_BATCH_SIZE = 8  # query segments per query-net call (fixed shape: one compile)


# --------------------------------------------------------------------------------------------------------------------
# The model from a workdir.
# --------------------------------------------------------------------------------------------------------------------


def checkpoint_steps(workdir: str | os.PathLike) -> list[int]:
  """The finished checkpoint steps under ``<workdir>/checkpoints`` (ascending)."""
  return checkpoint_lib.finished_steps(workdir)


def resolve_checkpoint(path: str | os.PathLike, step: int | None = None) -> tuple[str, int]:
  """``(workdir, step)`` for a separation run directory or one of its ``checkpoints/<step>`` folders.

  Raises:
    FileNotFoundError: no such directory, no finished checkpoint, or not that step (the message lists the steps).
  """
  path = os.path.abspath(os.fspath(path))
  if not os.path.isdir(path):
    raise FileNotFoundError(f"checkpoint directory not found: {path}")
  name, parent = os.path.basename(path), os.path.dirname(path)
  if name.isdigit() and os.path.basename(parent) == "checkpoints" and os.path.isdir(os.path.join(path, "state")):
    if step is not None and step != int(name):
      raise ValueError(f"--step {step} contradicts the checkpoint folder {path}")
    return os.path.dirname(parent), int(name)
  steps = checkpoint_steps(path)
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {os.path.join(path, 'checkpoints')} (train a separation run first)")
  if step is None:
    return path, steps[-1]
  if step not in steps:
    raise FileNotFoundError(f"no checkpoint at step {step} in {path}/checkpoints (steps: "
                            f"{', '.join(map(str, steps))})")
  return path, step


def load_class_table(workdir: str | os.PathLike) -> tuple[list[str], np.ndarray | None]:
  """``(class_names, embeddings (classes, embedding_dim))`` of ``<workdir>/class_embeddings.npz``; ``([], None)``
  when the run has none."""
  path = os.path.join(os.fspath(workdir), "class_embeddings.npz")
  if not os.path.exists(path):
    return [], None
  with np.load(path, allow_pickle=False) as f:
    return [str(n) for n in f["class_names"]], np.asarray(f["embeddings"], np.float32)


def _read_json_config(path: str) -> ml_collections.ConfigDict:
  with open(path, "rb") as f:
    return ml_collections.ConfigDict(json.load(f))


# --------------------------------------------------------------------------------------------------------------------
# The separator.
# --------------------------------------------------------------------------------------------------------------------


# The graph definition is a static argument, so separators of the same architecture share the compiled functions.
@functools.partial(jax.jit, static_argnums=0)
def _separate_batch(graphdef, state, chunks: jax.Array, condition: jax.Array) -> jax.Array:
  """``(batch, chunk)`` mixtures, ``(embedding_dim,)`` condition -> ``(batch, chunk)`` float32."""
  cond = jnp.broadcast_to(condition[None, :], (chunks.shape[0], condition.shape[-1]))
  return nnx.merge(graphdef, state)(chunks, cond).astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def _embed_batch(graphdef, state, segments: jax.Array) -> jax.Array:
  """``(batch, segment)`` queries -> ``(batch, embedding_dim)`` float32."""
  return nnx.merge(graphdef, state).embed(segments).astype(jnp.float32)


class Separator:
  """A query-conditioned separation model ready for inference on waveforms of any length and rate.

  Args:
    model: an ``nnx.Module`` with ``__call__(mixture (batch, samples), condition (batch, embedding_dim)) ->
      (batch, samples)`` and ``embed(query (batch, samples)) -> (batch, embedding_dim)`` at ``sample_rate``
      (``uss_jax.tasks.separation.QueryConditionedSeparator``); put in eval mode here.
    sample_rate: the model's rate in Hz (``config.data.sample_rate``).
    segment_seconds: query segment length in seconds (``config.data.segment_seconds``); also the unit of the
      default chunk length (``DEFAULT_CHUNK_SEGMENTS`` segments).
    class_names, class_embeddings: the class-average conditions (``(classes,)``, ``(classes, embedding_dim)``).
    embedding_dim: condition size (default: ``model.separator.condition_size`` or the class embeddings' width).
    description: where the model came from (for messages).
    step: the checkpoint step (for the summary), if any.
  """

  def __init__(self, model: nnx.Module, *, sample_rate: int, segment_seconds: float,
               class_names: Sequence[str] = (), class_embeddings: np.ndarray | None = None,
               embedding_dim: int | None = None, description: str = "model", step: int | None = None):
    model.eval()
    self.sample_rate = int(sample_rate)
    self.segment_seconds = float(segment_seconds)
    self.segment_samples = int(round(self.segment_seconds * self.sample_rate))
    self.class_names = [str(n) for n in class_names]
    self.class_embeddings = None if class_embeddings is None else np.asarray(class_embeddings, np.float32)
    if embedding_dim is None:
      sep = getattr(model, "separator", None)
      embedding_dim = getattr(sep, "condition_size", None)
      if embedding_dim is None and self.class_embeddings is not None:
        embedding_dim = self.class_embeddings.shape[-1]
    self.embedding_dim = None if embedding_dim is None else int(embedding_dim)
    self.description = description
    self.step = step
    self._graphdef, state = nnx.split(model)
    self._state = jax.device_put(state)

  @property
  def model(self) -> nnx.Module:
    """The model (eval mode), rebuilt from the separator's state (a copy: changing it leaves the separator as is)."""
    return nnx.merge(self._graphdef, jax.tree.map(lambda x: x, self._state))  # new Variables: merge shares them

  # ---- construction from a run directory ----

  @classmethod
  def from_workdir(cls, workdir: str | os.PathLike, step: int | None = None) -> "Separator":
    """The model of a separation run (``uss-jax train --config=configs/uss_resunet30.py ...``) at ``step``.

    Args:
      workdir: the run directory (or one of its ``checkpoints/<step>`` folders).
      step: checkpoint step; default the latest.

    Raises:
      FileNotFoundError: no checkpoint (or not that step), or no query-net config (``query_net_config.json``,
        written by ``SeparationTask.prepare``, nor the tagging run of ``config.query.workdir``).
      ValueError: the run is not a separation run.
    """
    from uss_jax.tasks.separation import QUERY_CONFIG_FILE  # pylint: disable=import-outside-toplevel

    workdir, step = resolve_checkpoint(workdir, step)
    step_dir = os.path.join(workdir, "checkpoints", str(step))
    config = _read_json_config(os.path.join(step_dir, "config", "metadata"))
    if config.get("task") != "separation":
      raise ValueError(f"{workdir} is a {config.get('task')!r} run, not a separation run")
    query_path = os.path.join(workdir, QUERY_CONFIG_FILE)
    if not os.path.exists(query_path):  # older runs: the tagging run the config points at
      tag_dir = config.query.get("workdir", "")
      tag_steps = checkpoint_steps(tag_dir) if tag_dir else []
      tag_step = config.query.get("step") or (tag_steps[-1] if tag_steps else None)
      query_path = os.path.join(tag_dir, "checkpoints", str(tag_step), "config", "metadata")
      if tag_step is None or not os.path.exists(query_path):
        raise FileNotFoundError(f"{workdir} has no {QUERY_CONFIG_FILE} and its query net's run "
                                f"{tag_dir or '(config.query.workdir unset)'} has no checkpoint config")
    query_config = _read_json_config(query_path)
    tree = restore_model_tree(os.path.join(step_dir, "state"))
    num_classes = int(np.asarray(tree["query_net"]["fc_audioset"]["kernel"]).shape[-1])
    abstract = nnx.eval_shape(lambda: build_separation_model(config, query_config, num_classes, nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    nnx.replace_by_pure_dict(state, tree)
    model = nnx.merge(graphdef, state)
    names, table = load_class_table(workdir)
    logging.info("separator: %s step %d, %d Hz, %d classes with average embeddings", workdir, step,
                 config.data.sample_rate, len(names))
    return cls(model, sample_rate=config.data.sample_rate, segment_seconds=config.data.segment_seconds,
               class_names=names, class_embeddings=table, description=workdir, step=step)

  # ---- conditions ----

  def class_condition(self, name: str) -> np.ndarray:
    """The class-average condition ``(embedding_dim,)`` of class ``name`` (exact, case-sensitive match).

    Raises:
      ValueError: unknown class (the message lists the known names), no class table, or a class without training
        anchor segments (all-zero row).
    """
    if self.class_embeddings is None or not self.class_names:
      raise ValueError(f"{self.description} has no class_embeddings.npz: use an audio query")
    if name not in self.class_names:
      raise ValueError(f"unknown class {name!r}; known classes: {', '.join(self.class_names)}")
    row = self.class_embeddings[self.class_names.index(name)]
    if not np.any(row):
      raise ValueError(f"class {name!r} had no training anchor segments, so it has no average embedding")
    return row.copy()

  def query_segments(self, waveform: np.ndarray, sample_rate: int | None = None,
                     name: str = "query") -> np.ndarray:
    """The non-silent query segments ``(segments, segment_samples)`` of a mono waveform (see the module docstring).

    Args:
      waveform: ``(samples,)`` at ``sample_rate`` Hz (default the model's rate).
      name: how the query is named in errors.

    Raises:
      ValueError: empty, NaN / inf, or silent (every segment's RMS below ``SILENCE_DBFS``).
    """
    x = np.asarray(waveform, np.float32)
    if x.ndim != 1:
      raise ValueError(f"query {name} must be a mono waveform (samples,), got shape {x.shape}")
    if not len(x):
      raise ValueError(f"query {name} has no samples")
    if not np.all(np.isfinite(x)):
      raise ValueError(f"query {name} contains NaN or infinite samples")
    sr = self.sample_rate if sample_rate is None else int(sample_rate)
    if sr != self.sample_rate:
      import soxr  # pylint: disable=import-outside-toplevel
      x = soxr.resample(x, sr, self.sample_rate).astype(np.float32)
    seg = self.segment_samples
    threshold = 10.0 ** (SILENCE_DBFS / 20.0)
    kept = []
    for start in range(0, len(x), seg):
      part = x[start:start + seg]
      if math.sqrt(float(np.mean(np.square(part, dtype=np.float64)))) < threshold:
        continue
      kept.append(np.resize(part, seg))  # repeats a partial segment to the full length
    if not kept:
      raise ValueError(f"query {name} is silent (every {self.segment_seconds:g} s segment is below "
                       f"{SILENCE_DBFS:g} dBFS RMS)")
    return np.stack(kept).astype(np.float32)

  def embed_segments(self, segments: np.ndarray) -> np.ndarray:
    """Query-net embeddings ``(segments, embedding_dim)`` of ``(segments, segment_samples)`` (any count)."""
    segments = np.asarray(segments, np.float32)
    out = []
    for i in range(0, len(segments), QUERY_BATCH_SIZE):
      part = segments[i:i + QUERY_BATCH_SIZE]
      batch = np.zeros((QUERY_BATCH_SIZE, segments.shape[1]), np.float32)
      batch[:len(part)] = part
      out.append(np.asarray(_embed_batch(self._graphdef, self._state, batch))[:len(part)])
    return np.concatenate(out)

  def embed_query_audio(self, queries: Any, sample_rate: int | None = None) -> np.ndarray:
    """The condition ``(embedding_dim,)`` of one or several query recordings (see the module docstring).

    Args:
      queries: a path, a ``(samples,)`` waveform, or a sequence of them (paths: any soundfile format and rate,
        mono-mixed; waveforms at ``sample_rate`` Hz, default the model's rate).
      sample_rate: rate of waveform queries in Hz.

    Returns:
      Mean over queries of (mean over the query's non-silent segments of the query-net embedding), float32.

    Raises:
      FileNotFoundError: a missing file. ValueError: no query, an unreadable / empty / NaN / silent query (named).
    """
    if isinstance(queries, (str, os.PathLike, np.ndarray)):
      queries = [queries]
    queries = list(queries)
    if not queries:
      raise ValueError("no query audio given")
    means = []
    for i, q in enumerate(queries):
      if isinstance(q, (str, os.PathLike)):
        x, sr = read_mono(q, "query")
        name = os.fspath(q)
      else:
        x, sr, name = np.asarray(q), sample_rate, f"#{i}"
      means.append(self.embed_segments(self.query_segments(x, sr, name)).mean(axis=0))
    condition = np.mean(np.stack(means), axis=0).astype(np.float32)
    if not np.all(np.isfinite(condition)):
      raise FloatingPointError("the query net returned a non-finite embedding")
    return condition

  # ---- separation ----

  def chunk_samples(self, chunk_seconds: float | None = None) -> int:
    """Chunk length in samples at the model rate (even): ``chunk_seconds`` (default ``DEFAULT_CHUNK_SEGMENTS`` x
    ``segment_seconds``) rounded to an even count.

    Raises:
      ValueError: a chunk shorter than 0.1 s.
    """
    seconds = DEFAULT_CHUNK_SEGMENTS * self.segment_seconds if chunk_seconds is None else float(chunk_seconds)
    if not seconds >= 0.1:
      raise ValueError(f"chunk_seconds must be >= 0.1, got {chunk_seconds}")
    return 2 * int(round(seconds * self.sample_rate / 2))

  def _check_condition(self, condition: Any) -> jax.Array:
    c = np.asarray(condition, np.float32).reshape(-1)
    if self.embedding_dim is not None and c.shape != (self.embedding_dim,):
      raise ValueError(f"condition must have {self.embedding_dim} values, got shape {np.shape(condition)}")
    if not np.all(np.isfinite(c)):
      raise ValueError("condition contains NaN or infinite values")
    return jnp.asarray(c)

  def process_chunks(self, chunks: np.ndarray, condition: Any) -> np.ndarray:
    """The model on a batch of chunks: ``(batch, chunk_samples)`` -> ``(batch, chunk_samples)`` float32.

    Raises:
      FloatingPointError: the model produced NaN or inf.
    """
    y = np.asarray(_separate_batch(self._graphdef, self._state, jnp.asarray(chunks, jnp.float32),
                                   jnp.asarray(condition)))
    if not np.all(np.isfinite(y)):
      raise FloatingPointError(f"the separation model ({self.description}) produced NaN or infinite samples")
    return y

  def separate_stream(self, blocks: Iterable[np.ndarray], sample_rate: int, condition: Any, *,
                      chunk_seconds: float | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                      stats: dict[str, int] | None = None) -> Iterator[np.ndarray]:
    """Streaming ``separate``: mono blocks at ``sample_rate`` in, separated blocks at ``sample_rate`` out (as many
    samples in total as came in).

    Args:
      blocks: ``(n,)`` float32 arrays.
      sample_rate: their rate in Hz.
      condition: ``(embedding_dim,)`` (``embed_query_audio`` / ``class_condition``).
      chunk_seconds, batch_size: see ``separate``.
      stats: filled with ``chunks`` / ``calls`` / ``model_samples`` when given.

    Raises:
      ValueError: bad condition / chunk / rate. FloatingPointError: non-finite model output.
    """
    if int(sample_rate) <= 0:
      raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    cond = self._check_condition(condition)
    chunk = self.chunk_samples(chunk_seconds)
    stats = {} if stats is None else stats
    counter = {"n": 0}
    model_counter = {"n": 0}
    at_model_rate = _counted(resample_stream(_counted(blocks, counter), sample_rate, self.sample_rate),
                             model_counter)
    separated = overlap_add(at_model_rate, lambda c: self.process_chunks(c, cond), chunk, int(batch_size), stats)
    yield from _match_length(resample_stream(separated, self.sample_rate, sample_rate), counter)
    stats["model_samples"] = model_counter["n"]

  def separate(self, waveform: np.ndarray, sample_rate: int, condition: Any, *, chunk_seconds: float | None = None,
               batch_size: int = DEFAULT_BATCH_SIZE, stats: dict[str, int] | None = None) -> np.ndarray:
    """Separates the source described by ``condition`` from a mono mixture of any length and rate.

    Args:
      waveform: ``(samples,)`` mixture at ``sample_rate`` Hz (full scale 1.0).
      sample_rate: Hz; resampled to the model's rate and back with soxr HQ.
      condition: ``(embedding_dim,)`` query condition.
      chunk_seconds: chunk length in seconds at the model rate (default ``DEFAULT_CHUNK_SEGMENTS`` x
        ``segment_seconds``); chunks overlap by half (see ``overlap_add``).
      batch_size: chunks per device call (device memory ~ ``batch_size`` chunks; one compile per value).
      stats: filled with ``chunks``, ``calls`` and ``model_samples`` when given.

    Returns:
      ``(samples,)`` float32 at ``sample_rate``, the input's length.

    Raises:
      ValueError: not 1-D, empty or non-finite mixture, bad condition. FloatingPointError: non-finite output.
    """
    x = np.asarray(waveform, np.float32)
    if x.ndim != 1:
      raise ValueError(f"mixture must be a mono waveform (samples,), got shape {x.shape}")
    if not len(x):
      raise ValueError("mixture has no samples")
    if not np.all(np.isfinite(x)):
      raise ValueError("mixture contains NaN or infinite samples")
    parts = list(self.separate_stream([x], sample_rate, condition, chunk_seconds=chunk_seconds,
                                      batch_size=batch_size, stats=stats))
    return np.concatenate(parts).astype(np.float32)


# --------------------------------------------------------------------------------------------------------------------
# Files and timing.
# --------------------------------------------------------------------------------------------------------------------


def separate_file(separator: Separator, mixture: str | os.PathLike, output: str | os.PathLike, *,
                  query_audio: Sequence[str | os.PathLike] | None = None, query_class: str | None = None,
                  chunk_seconds: float | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                  subtype: str | None = None, plot: str | os.PathLike | None = None) -> dict[str, Any]:
  """Separates an audio file with an audio or class query and writes the result (streaming, see module docstring).

  Args:
    separator: the model.
    mixture: input file (any soundfile format, rate and channel count; mono-mixed).
    output: output file (format from the extension); mono, at the mixture's rate, the mixture's length. Written to a
      temporary file beside it and renamed at the end, so a failure never leaves a partial file.
    query_audio: query recordings (one condition: the mean of their embeddings); or
    query_class: a class name of the run's ``class_embeddings.npz``. Exactly one of the two.
    chunk_seconds, batch_size: see ``Separator.separate``.
    subtype: soundfile subtype; default ``FLOAT`` (32-bit float, unclipped) when the format has it. Integer PCM
      subtypes (``PCM_16`` ...) get the signal clipped to [-1, 1] first.
    plot: if given, a PNG of mixture and result spectrograms (reads both files whole).

  Returns:
    A summary dict (files, rates, seconds, query, chunks, wall time and real-time factor, peak, clipped samples).

  Raises:
    FileNotFoundError / ValueError: missing or bad files, unknown class, silent query, NaN, both or neither query.
    FloatingPointError: the model produced NaN / inf.
  """
  mixture, output = os.fspath(mixture), os.fspath(output)
  if (query_audio is None) == (query_class is None):
    raise ValueError("give exactly one of query_audio and query_class")
  fmt, subtype = output_format(output, subtype)
  sr, frames = check_mixture(mixture)
  for q in query_audio or ():
    audio_info(q, "query")
  t0 = time.perf_counter()
  if query_class is not None:
    condition = separator.class_condition(query_class)
    query = f"class {query_class!r}"
  else:
    condition = separator.embed_query_audio(list(query_audio))
    query = "audio " + ", ".join(os.path.basename(os.fspath(q)) for q in query_audio)
  t1 = time.perf_counter()
  out_dir = os.path.dirname(os.path.abspath(output))
  os.makedirs(out_dir, exist_ok=True)
  stats: dict[str, int] = {}
  peak, clipped, written = 0.0, 0, 0
  sf = _sf()
  fd, tmp = tempfile.mkstemp(prefix=".uss-jax-", suffix=os.path.splitext(output)[1], dir=out_dir)
  os.close(fd)
  try:
    blocks, _, _ = read_blocks(mixture, "mixture")
    with sf.SoundFile(tmp, "w", samplerate=sr, channels=1, format=fmt, subtype=subtype) as f:
      for block in separator.separate_stream(blocks, sr, condition, chunk_seconds=chunk_seconds,
                                             batch_size=batch_size, stats=stats):
        peak = max(peak, float(np.max(np.abs(block))) if len(block) else 0.0)
        if _clips(subtype):
          clipped += int(np.sum(np.abs(block) > 1.0))
          block = np.clip(block, -1.0, 1.0)
        f.write(block)
        written += len(block)
    os.replace(tmp, output)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  t2 = time.perf_counter()
  summary = {
      "mixture": mixture, "output": output, "query": query, "checkpoint": separator.description,
      "step": separator.step, "sample_rate": sr, "model_sample_rate": separator.sample_rate,
      "samples": written, "seconds": round(frames / sr, 3), "subtype": subtype, "chunks": stats.get("chunks", 0),
      "chunk_seconds": separator.chunk_samples(chunk_seconds) / separator.sample_rate, "batch_size": batch_size,
      "query_s": round(t1 - t0, 3), "separate_s": round(t2 - t1, 3),  # compilation included
      "real_time_factor": round((t2 - t1) / (frames / sr), 4), "peak": round(peak, 4), "clipped_samples": clipped,
  }
  if plot is not None:
    mix, _ = read_mono(mixture, "mixture")
    est, _ = read_mono(output, "output")
    plot_spectrograms(mix, est, sr, plot, query)
    summary["plot"] = os.fspath(plot)
  return summary


def real_time_factor(separator: Separator, seconds: float = 60.0, *, sample_rate: int | None = None,
                     condition: Any = None, chunk_seconds: float | None = None,
                     batch_size: int = DEFAULT_BATCH_SIZE, repeats: int = 3, seed: int = 0) -> dict[str, Any]:
  """Wall time of ``Separator.separate`` on a ``seconds`` long noise mixture, over its duration (the RTF).

  The first call (compilation included) is reported separately as ``first_call_s``; then ``repeats`` timed calls.
  Host work (resampling when ``sample_rate`` differs from the model's, chunking, overlap-add) is included, as in
  real use; the result is a numpy array, so the device work has finished when the clock stops.

  Args:
    separator: the model (e.g. ``Separator.from_workdir`` or a freshly initialised ``build_separation_model``).
    seconds: mixture duration in seconds.
    sample_rate: mixture rate in Hz (default the model's: no resampling).
    condition: ``(embedding_dim,)``; default a fixed random unit-norm vector.
    chunk_seconds, batch_size: as ``Separator.separate``.
    repeats: timed calls after the first.
    seed: of the noise mixture (0.1 x standard normal) and the default condition.

  Returns:
    dict: ``seconds``, ``sample_rate``, ``chunk_seconds``, ``batch_size``, ``chunks``, ``first_call_s``,
    ``times_s`` (list), ``best_s``, ``median_s``, ``rtf_best`` / ``rtf_median`` (time / duration; < 1 is faster than
    real time), ``device`` (``jax.devices()[0].device_kind``).
  """
  rng = np.random.default_rng(seed)
  sr = separator.sample_rate if sample_rate is None else int(sample_rate)
  x = (0.1 * rng.standard_normal(int(round(seconds * sr)))).astype(np.float32)
  if condition is None:
    dim = separator.embedding_dim
    if dim is None:
      raise ValueError("the separator's embedding size is unknown: pass a condition")
    condition = rng.standard_normal(dim).astype(np.float32)
    condition /= np.linalg.norm(condition)
  kw = dict(chunk_seconds=chunk_seconds, batch_size=batch_size)
  stats: dict[str, int] = {}
  t = time.perf_counter()
  separator.separate(x, sr, condition, stats=stats, **kw)
  first = time.perf_counter() - t
  times = []
  for _ in range(max(1, repeats)):
    t = time.perf_counter()
    separator.separate(x, sr, condition, **kw)
    times.append(time.perf_counter() - t)
  best, median = float(min(times)), float(np.median(times))
  return {
      "seconds": float(seconds), "sample_rate": sr,
      "chunk_seconds": separator.chunk_samples(chunk_seconds) / separator.sample_rate, "batch_size": batch_size,
      "chunks": stats.get("chunks", 0), "first_call_s": first, "times_s": times,
      "best_s": best, "median_s": median, "rtf_best": best / seconds, "rtf_median": median / seconds,
      "device": getattr(jax.devices()[0], "device_kind", jax.devices()[0].platform),
  }
