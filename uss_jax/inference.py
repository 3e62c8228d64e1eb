r"""Separation of audio files of any length with any separation / extraction run (``uss-jax separate``).

    sep = Separator.from_workdir("/runs/uss")                          # any registered system's run
    condition = sep.embed_query_audio(["dog1.wav", "dog2.wav"])        # or sep.class_condition("Dog"),
                                                                       #    sep.text_condition("a dog barking")
    estimate = sep.separate(waveform, 44100, condition)                # (samples,) at 44.1 kHz
    separate_file(sep, "mix.flac", "dog.wav", query_class="Dog", plot="dog.png")

One model-independent path for every system of ``uss_jax.models.registry`` (ResUNet30, MAE-ResUNet, Swin-UNet,
SoundBeam, Waveformer, SoundFilter ...): the run's model is rebuilt from its stored config and context
(``uss_jax.runs.load_system``) and driven only through the system interface (``uss_jax.models.interface``):
``separate(mixture, condition)`` and ``embed_audio`` / ``embed_class`` / ``embed_text``. Per-model code is only that
forward; everything below is shared.

Pipeline (one pass, streaming, so host and device memory stay bounded whatever the file length):

1. The mixture is read in blocks with soundfile (any format libsndfile reads), mixed to mono (mean over channels) and
   resampled to the system's rate with a streaming soxr HQ resampler (bit-identical to a one-shot ``soxr.resample``).
2. Chunking with 50 % overlap-add: the signal (with ``hop = chunk / 2`` zeros in front) is cut into chunks of
   ``chunk`` samples every ``hop`` samples, enough of them that every input sample lies in exactly two chunks; each
   chunk goes through the model; each output chunk is multiplied by a periodic Hann window ``w`` and added at its
   position. ``w[n] + w[n + hop] = 1`` (constant overlap-add), so a memoryless model ``y[n] = f(x[n])`` comes out
   unchanged, and the seams between chunks are crossfaded. Chunks go to the device ``batch_size`` at a time through
   ONE jitted function of fixed shape ``(batch_size, chunk)`` (the last batch padded with silent chunks): one compile
   per (architecture, chunk, batch_size), shared by all separators and files; device memory ~ batch_size chunks.
   Systems with several outputs (SoundFilter: enhanced, suppressed) are overlap-added together.
3. The result is trimmed to the model-rate length, resampled back to the input rate (soxr HQ, streaming) and cut or
   zero-padded to exactly the input length (the two resamplings may differ by a sample).

Online systems (``SystemInterface.streaming``: Waveformer) can replace step 2 by their chunk-by-chunk path
(``online=True``, ``uss-jax separate/extract --stream``): consecutive chunks of the system's ``chunk_samples`` go one at
a time through one jitted ``stream_chunk(carry, chunk, condition)`` that carries the model's state
(``uss_jax.audio.streaming.online_chunks`` drops its one-chunk lag), so the result equals the system's offline forward
of the whole signal, with a latency of one chunk.

Query condition (``(condition_size,)``):

* ``embed_query_audio``: each query (file or array) is mono-mixed, resampled to the model rate and cut into segments
  of the system's query length (``SystemInterface.audio_query_samples``; 2 s for the USS recipes, the enrollment
  length for SoundBeam); the last, partial segment is completed by repeating it (bytedance/uss ``inference.py``
  ``calculate_query_emb`` + ``repeat_to_length``). Segments whose RMS is below ``SILENCE_DBFS`` (-80 dB re full scale)
  are left out; a query with no segment above it is rejected. The query's embedding is the mean over its segments
  and, with several queries, the condition is the mean of the per-query means (each query weighs the same).
* ``class_condition``: the run's class-average table (``<workdir>/class_embeddings.npz``: the mean query embedding
  over each class's training anchor segments) when it has one, else the system's learned class clue
  (``embed_class``, SoundBeam / Waveformer).
* ``text_condition``: the system's text tower (``embed_text``) on the sentence tokenised by the system's tokenizer
  (``registry.text_tokenizer``).
* A query encoder of one run drives the separator of another when their ``condition_space`` strings are equal
  (``Separator.compatible_with``); otherwise the condition is refused with both spaces named.

Output files: mono, at the input's sample rate, 32-bit float (``FLOAT``) by default when the format has it (no
clipping: a separated source may exceed full scale); ``subtype='PCM_16'`` writes 16-bit PCM, clipped to [-1, 1].
Every output is written to a temporary file and renamed when complete. The optional spectrogram plot reads the
mixture and the result whole.

Source: bytedance/uss ``uss/inference.py`` (segment-wise separation, there with non-overlapping segments of the
training length simply concatenated; query embedding averaged over segments and files); the overlap-add is the
usual constant-overlap-add STFT synthesis condition (Allen & Rabiner 1977) applied to model outputs.
"""

from __future__ import annotations

import functools
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
import numpy as np

# Re-exported: the streaming file I/O and overlap-add live in uss_jax.audio.streaming.
from uss_jax.audio.streaming import (  # pylint: disable=unused-import
    READ_BLOCK_SECONDS, _clips, _counted, _match_length, _sf, audio_info, check_mixture, hann_window, output_format,
    online_chunks, overlap_add, plot_spectrograms, read_blocks, read_mono, resample_stream, spectrogram_db)
from uss_jax.models import interface, registry
from uss_jax.runs import checkpoint_steps, load_class_table, resolve_checkpoint  # pylint: disable=unused-import
from uss_jax import runs
from uss_jax.train.checkpoint import restore_model_tree  # pylint: disable=unused-import  (re-exported)

SILENCE_DBFS = -80.0  # a query segment whose RMS (dB re 1.0) is below this is silent
DEFAULT_CHUNK_SEGMENTS = 2  # default chunk = 2 x the training segment (4 s for the USS recipes)
DEFAULT_BATCH_SIZE = 8  # chunks per device call
QUERY_BATCH_SIZE = 8  # query segments per query-encoder call (fixed shape: one compile)


# --------------------------------------------------------------------------------------------------------------------
# The separator.
# --------------------------------------------------------------------------------------------------------------------


# The graph definition and method name are static, so separators of the same architecture share compiled functions.
@functools.partial(jax.jit, static_argnums=(0, 1))
def _call(graphdef, method: str, state, *args):
  """``getattr(model, method)(*args)`` of the merged model, every output cast to float32."""
  out = getattr(nnx.merge(graphdef, state), method)(*args)
  return jax.tree.map(lambda x: x.astype(jnp.float32), out)


@functools.partial(jax.jit, static_argnums=(0,))
def _stream_call(graphdef, state, carry, chunk, condition):
  """One online step ``model.stream_chunk(carry, chunk, condition) -> (output, carry)`` of the merged model."""
  out, carry = nnx.merge(graphdef, state).stream_chunk(carry, chunk, condition)
  return out.astype(jnp.float32), carry


class _LegacyModel(nnx.Module):
  """A bare ``(mixture, condition) -> waveform`` module (+ optional ``embed``) seen through the system interface."""

  def __init__(self, model: nnx.Module, info: interface.SystemInterface):
    self.model = model
    self.info = info

  def interface(self) -> interface.SystemInterface:
    return self.info

  def separate(self, mixture, condition):
    return {"waveform": self.model(mixture, condition)}

  def embed_audio(self, audio):
    return self.model.embed(audio)


class Separator:
  """A separation / extraction system ready for inference on waveforms of any length and rate.

  Args:
    model: a system (``uss_jax.models.interface``: ``interface()``, ``separate``, ``embed_*``), or a bare module with
      ``__call__(mixture (batch, samples), condition (batch, D)) -> (batch, samples)`` (and optionally
      ``embed(query (batch, samples)) -> (batch, D)``) described by ``sample_rate`` / ``segment_seconds``; put in
      eval mode here.
    sample_rate, segment_seconds: the bare module's rate (Hz) and training segment (s); ignored for systems.
    class_names, class_embeddings: the class-average conditions (``(classes,)``, ``(classes, condition_size)``).
    embedding_dim: a bare module's condition size (default: the class embeddings' width).
    description: where the model came from (for messages). step: the checkpoint step, if any.
    tokenizer: ``callable(list[str]) -> (token_ids, attention_mask)`` for text queries (``registry.text_tokenizer``).
  """

  def __init__(self, model: nnx.Module, *, sample_rate: int | None = None, segment_seconds: float | None = None,
               class_names: Sequence[str] = (), class_embeddings: np.ndarray | None = None,
               embedding_dim: int | None = None, description: str = "model", step: int | None = None,
               tokenizer: Callable[[list[str]], tuple[np.ndarray, np.ndarray]] | None = None):
    model.eval()
    self.class_names = [str(n) for n in class_names]
    self.class_embeddings = None if class_embeddings is None else np.asarray(class_embeddings, np.float32)
    if callable(getattr(model, "interface", None)):
      self.info = interface.check_system(model)
    else:
      if sample_rate is None or segment_seconds is None:
        raise ValueError("a bare separation module needs sample_rate and segment_seconds")
      dim = embedding_dim
      if dim is None:
        dim = getattr(getattr(model, "separator", None), "condition_size", None)
      if dim is None and self.class_embeddings is not None:
        dim = self.class_embeddings.shape[-1]
      sr = int(sample_rate)
      self.info = interface.SystemInterface(
          name=type(model).__name__, sample_rate=sr, segment_samples=int(round(float(segment_seconds) * sr)),
          condition_size=int(dim or 0), query_kinds=("audio",) if callable(getattr(model, "embed", None)) else ())
      model = _LegacyModel(model, self.info)
    self.description = description
    self.step = step
    self.tokenizer = tokenizer
    self._graphdef, state = nnx.split(model)
    self._state = jax.device_put(state)

  # ---- facts ----

  @property
  def sample_rate(self) -> int:
    return self.info.sample_rate

  @property
  def segment_samples(self) -> int:
    return self.info.segment_samples

  @property
  def segment_seconds(self) -> float:
    return self.info.segment_samples / self.info.sample_rate

  @property
  def embedding_dim(self) -> int | None:
    return self.info.condition_size or None

  @property
  def outputs(self) -> tuple[str, ...]:
    return self.info.outputs

  @property
  def model(self) -> nnx.Module:
    """The model (eval mode), rebuilt from the separator's state (a copy: changing it leaves the separator as is)."""
    model = nnx.merge(self._graphdef, jax.tree.map(lambda x: x, self._state))  # new Variables: merge shares them
    return model.model if isinstance(model, _LegacyModel) else model

  def query_kinds(self) -> list[str]:
    """The query kinds this run accepts: the system's, plus ``'class'`` when the run has a class-average table."""
    kinds = list(self.info.query_kinds)
    if self.class_embeddings is not None and "class" not in kinds:
      kinds.append("class")
    return kinds

  def compatible_with(self, other: "Separator") -> bool:
    """Whether ``other``'s conditions can drive this separator (equal, non-empty condition spaces and sizes)."""
    a, b = self.info, other.info
    return bool(a.condition_space) and a.condition_space == b.condition_space and a.condition_size == b.condition_size

  # ---- construction from a run directory ----

  @classmethod
  def from_workdir(cls, workdir: str | os.PathLike, step: int | None = None) -> "Separator":
    """The system of a separation / extraction run (trained or ``uss-jax convert``-ed) at ``step`` (default latest).

    Raises:
      FileNotFoundError: no checkpoint (or not that step), or no context to rebuild the model.
      ValueError: the run is not a separation / extraction run (e.g. a tagging run).
    """
    run = runs.load_system(workdir, step)
    names, table = runs.load_class_table(run.workdir)
    tokenizer = registry.text_tokenizer(run.config, run.context) if "text" in run.info.query_kinds else None
    return cls(run.model, class_names=names, class_embeddings=table, description=run.workdir, step=run.step,
               tokenizer=tokenizer)

  # ---- conditions ----

  def class_condition(self, name: str) -> np.ndarray:
    """The condition ``(condition_size,)`` of class ``name`` (exact, case-sensitive match): the run's class-average
    embedding, else the system's learned class clue.

    Raises:
      ValueError: unknown class (the message lists the known names), a run without class queries, or a class without
        training anchor segments (all-zero row).
    """
    if self.class_embeddings is not None and self.class_names:
      if name not in self.class_names:
        raise ValueError(f"unknown class {name!r}; known classes: {', '.join(self.class_names)}")
      row = self.class_embeddings[self.class_names.index(name)]
      if not np.any(row):
        raise ValueError(f"class {name!r} had no training anchor segments, so it has no average embedding")
      return row.copy()
    if "class" in self.info.query_kinds:
      names = list(self.info.class_names)
      if name not in names:
        raise ValueError(f"unknown class {name!r}; known classes: {', '.join(names)}")
      ids = np.array([names.index(name)], np.int32)
      return self._finite(np.asarray(_call(self._graphdef, "embed_class", self._state, ids))[0], "class clue")
    raise ValueError(f"{self.description} takes no class queries (queries: {', '.join(self.query_kinds()) or 'none'})")

  def text_condition(self, text: str | Sequence[str]) -> np.ndarray:
    """The condition ``(condition_size,)`` of a sentence (several sentences: the mean of their embeddings).

    Raises:
      ValueError: a run without a text tower, or an empty text.
    """
    texts = [text] if isinstance(text, str) else list(text)
    if "text" not in self.info.query_kinds or self.tokenizer is None:
      raise ValueError(f"{self.description} takes no text queries (queries: {', '.join(self.query_kinds()) or 'none'})")
    if not texts or not all(t.strip() for t in texts):
      raise ValueError("the text query is empty")
    ids, mask = self.tokenizer(texts)
    emb = np.asarray(_call(self._graphdef, "embed_text", self._state, jnp.asarray(ids, jnp.int32),
                           jnp.asarray(mask, jnp.int32)))
    return self._finite(emb.mean(axis=0), "text embedding")

  def query_segments(self, waveform: np.ndarray, sample_rate: int | None = None,
                     name: str = "query") -> np.ndarray:
    """The non-silent query segments ``(segments, audio_query_samples)`` of a mono waveform (module docstring).

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
    seg = self.info.audio_query_samples
    threshold = 10.0 ** (SILENCE_DBFS / 20.0)
    kept = []
    for start in range(0, len(x), seg):
      part = x[start:start + seg]
      if math.sqrt(float(np.mean(np.square(part, dtype=np.float64)))) < threshold:
        continue
      kept.append(np.resize(part, seg))  # repeats a partial segment to the full length
    if not kept:
      raise ValueError(f"query {name} is silent (every {seg / self.sample_rate:g} s segment is below "
                       f"{SILENCE_DBFS:g} dBFS RMS)")
    return np.stack(kept).astype(np.float32)

  def embed_segments(self, segments: np.ndarray) -> np.ndarray:
    """Query embeddings ``(segments, condition_size)`` of ``(segments, audio_query_samples)`` (any count).

    Raises:
      ValueError: the system takes no audio queries.
    """
    if "audio" not in self.info.query_kinds:
      raise ValueError(f"{self.description} takes no audio queries (queries: {', '.join(self.query_kinds()) or 'none'})")
    segments = np.asarray(segments, np.float32)
    out = []
    for i in range(0, len(segments), QUERY_BATCH_SIZE):
      part = segments[i:i + QUERY_BATCH_SIZE]
      batch = np.zeros((QUERY_BATCH_SIZE, segments.shape[1]), np.float32)
      batch[:len(part)] = part
      out.append(np.asarray(_call(self._graphdef, "embed_audio", self._state, batch))[:len(part)])
    return np.concatenate(out)

  def embed_query_audio(self, queries: Any, sample_rate: int | None = None) -> np.ndarray:
    """The condition ``(condition_size,)`` of one or several query recordings (see the module docstring).

    Args:
      queries: a path, a ``(samples,)`` waveform, or a sequence of them (paths: any soundfile format and rate,
        mono-mixed; waveforms at ``sample_rate`` Hz, default the model's rate).
      sample_rate: rate of waveform queries in Hz.

    Returns:
      Mean over queries of (mean over the query's non-silent segments of the query embedding), float32.

    Raises:
      FileNotFoundError: a missing file. ValueError: no query, an unreadable / empty / NaN / silent query (named),
        or a system without audio queries.
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
    return self._finite(np.mean(np.stack(means), axis=0), "query embedding")

  @staticmethod
  def _finite(c: np.ndarray, what: str) -> np.ndarray:
    c = np.asarray(c, np.float32)
    if not np.all(np.isfinite(c)):
      raise FloatingPointError(f"the query encoder returned a non-finite {what}")
    return c

  def condition(self, *, audio: Any = None, class_name: str | None = None, text: str | Sequence[str] | None = None,
                query_separator: "Separator | None" = None) -> tuple[np.ndarray, str]:
    """The condition of exactly one query, computed by this run's query encoder or by ``query_separator``'s (another
    run whose condition space equals this one's); returns ``(condition, description)``.

    Raises:
      ValueError: none or several queries, or incompatible condition spaces (both named).
    """
    given = [k for k, v in (("audio", audio), ("class", class_name), ("text", text)) if v is not None]
    if len(given) != 1:
      raise ValueError(f"give exactly one query (audio, class or text), got {given or 'none'}")
    encoder = self
    if query_separator is not None and query_separator is not self:
      if not self.compatible_with(query_separator):
        raise ValueError(
            f"the query run {query_separator.description} conditions in space "
            f"{query_separator.info.condition_space or '(unnamed)'} ({query_separator.info.condition_size}-d), "
            f"this separator in {self.info.condition_space or '(unnamed)'} ({self.info.condition_size}-d): "
            "their query encoders are not interchangeable")
      encoder = query_separator
    if audio is not None:
      files = [audio] if isinstance(audio, (str, os.PathLike, np.ndarray)) else list(audio)
      desc = "audio " + ", ".join(os.path.basename(os.fspath(q)) if not isinstance(q, np.ndarray) else "array"
                                  for q in files)
      return encoder.embed_query_audio(files), desc
    if class_name is not None:
      return encoder.class_condition(class_name), f"class {class_name!r}"
    return encoder.text_condition(text), f"text {text!r}"

  # ---- separation ----

  def chunk_samples(self, chunk_seconds: float | None = None) -> int:
    """Chunk length in samples at the model rate (even): ``chunk_seconds`` (default ``DEFAULT_CHUNK_SEGMENTS`` x
    the training segment) rounded to an even count.

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

  def _outputs(self, outputs: Sequence[str] | None) -> tuple[str, ...]:
    outputs = tuple(outputs or self.outputs[:1])
    unknown = [o for o in outputs if o not in self.outputs]
    if unknown:
      raise ValueError(f"{self.description} has no output {unknown[0]!r}; outputs: {', '.join(self.outputs)}")
    return outputs

  def process_chunks(self, chunks: np.ndarray, condition: Any, outputs: Sequence[str] | None = None) -> np.ndarray:
    """The model on a batch of chunks: ``(batch, chunk_samples)`` -> ``(batch, chunk_samples)`` float32 (one output)
    or ``(batch, chunk_samples, len(outputs))``.

    Raises:
      FloatingPointError: the model produced NaN or inf.
    """
    names = self._outputs(outputs)
    cond = jnp.broadcast_to(jnp.asarray(condition)[None], (len(chunks), np.shape(condition)[-1]))
    out = _call(self._graphdef, "separate", self._state, jnp.asarray(chunks, jnp.float32), cond)
    y = np.stack([np.asarray(out[n]) for n in names], axis=-1)
    if not np.all(np.isfinite(y)):
      raise FloatingPointError(f"the separation model ({self.description}) produced NaN or infinite samples")
    return y[..., 0] if len(names) == 1 else y

  def separate_stream(self, blocks: Iterable[np.ndarray], sample_rate: int, condition: Any, *,
                      chunk_seconds: float | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                      outputs: Sequence[str] | None = None, stats: dict[str, Any] | None = None,
                      online: bool = False) -> Iterator[np.ndarray]:
    """Streaming ``separate``: mono blocks at ``sample_rate`` in, separated blocks at ``sample_rate`` out (as many
    samples in total as came in): ``(n,)`` for one output, ``(n, len(outputs))`` for several.

    Args:
      blocks: ``(n,)`` float32 arrays.
      sample_rate: their rate in Hz.
      condition: ``(condition_size,)`` (``condition`` / ``embed_query_audio`` / ``class_condition`` ...).
      chunk_seconds, batch_size: see ``separate`` (offline only).
      outputs: which of the system's outputs (default its first, the target estimate).
      stats: filled with ``chunks`` / ``calls`` / ``model_samples`` when given; online also ``chunk_samples``,
        ``compile_s`` (the warm-up step) and ``stream_s`` (wall time of the chunk steps, host transfers included).
      online: run an online system (``SystemInterface.streaming``, e.g. Waveformer) chunk by chunk with carried
        state (``online_chunks``): consecutive chunks of the system's ``chunk_samples`` through one jitted
        ``stream_chunk(carry, chunk (1, chunk_samples), condition (1, D)) -> (output, carry)`` whose output lags
        ``stream_lag_chunks`` (default 1) chunks; for Waveformer the result equals the offline forward of the whole
        signal (not the overlap-added chunks of the offline path).

    Raises:
      ValueError: bad condition / chunk / rate / output; ``online`` for a system without a streaming path (the
        system is named), or with ``chunk_seconds`` or several outputs. FloatingPointError: non-finite model output.
    """
    if int(sample_rate) <= 0:
      raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    cond = self._check_condition(condition)
    names = self._outputs(outputs)
    stats = {} if stats is None else stats
    counter = {"n": 0}
    model_counter = {"n": 0}
    at_model_rate = _counted(resample_stream(_counted(blocks, counter), sample_rate, self.sample_rate),
                             model_counter)
    if online:
      separated = self._online(at_model_rate, cond, names, chunk_seconds, stats)
    else:
      chunk = self.chunk_samples(chunk_seconds)
      separated = overlap_add(at_model_rate, lambda c: self.process_chunks(c, cond, names), chunk, int(batch_size),
                              stats)
    yield from _match_length(resample_stream(separated, self.sample_rate, sample_rate), counter)
    stats["model_samples"] = model_counter["n"]

  def require_online(self) -> None:
    """Checks that the system has an online (streaming) path (``SystemInterface.streaming``).

    Raises:
      ValueError: it has none; the message names the run and its model.
    """
    if not self.info.streaming:
      raise ValueError(f"--stream: {self.description} is a {self.info.name!r} run, an offline system with no "
                       "chunk-by-chunk path (online systems: waveformer); run it without --stream")

  def _online(self, blocks: Iterable[np.ndarray], cond: jax.Array, names: tuple[str, ...],
              chunk_seconds: float | None, stats: dict[str, Any]) -> Iterator[np.ndarray]:
    """The online path of ``separate_stream`` at the model rate (see there)."""
    self.require_online()
    if chunk_seconds is not None:
      raise ValueError("online separation runs the system's own chunk; chunk_seconds applies to offline runs only")
    if names != self.outputs[:1]:
      raise ValueError(f"online separation gives only the target estimate {self.outputs[0]!r}, not {list(names)}")
    model = nnx.merge(self._graphdef, self._state)
    chunk, lag = int(model.chunk_samples), int(getattr(model, "stream_lag_chunks", 1))
    carry = {"c": model.stream_init(1)}
    c = cond[None]
    t0 = time.perf_counter()
    jax.block_until_ready(_stream_call(self._graphdef, self._state, carry["c"], jnp.zeros((1, chunk)), c))
    stats.update(chunk_samples=chunk, compile_s=time.perf_counter() - t0, stream_s=0.0, calls=0)

    def step(x: np.ndarray) -> np.ndarray:
      t = time.perf_counter()
      out, carry["c"] = _stream_call(self._graphdef, self._state, carry["c"], jnp.asarray(x[None]), c)
      y = np.asarray(out)[0]
      stats["stream_s"] += time.perf_counter() - t
      stats["calls"] += 1
      if not np.all(np.isfinite(y)):
        raise FloatingPointError(f"the separation model ({self.description}) produced NaN or infinite samples")
      return y

    return online_chunks(blocks, step, chunk, lag, stats)

  def separate(self, waveform: np.ndarray, sample_rate: int, condition: Any, *, chunk_seconds: float | None = None,
               batch_size: int = DEFAULT_BATCH_SIZE, outputs: Sequence[str] | None = None,
               stats: dict[str, Any] | None = None, online: bool = False) -> np.ndarray:
    """Separates the source described by ``condition`` from a mono mixture of any length and rate.

    Args:
      waveform: ``(samples,)`` mixture at ``sample_rate`` Hz (full scale 1.0).
      sample_rate: Hz; resampled to the model's rate and back with soxr HQ.
      condition: ``(condition_size,)`` query condition.
      chunk_seconds: chunk length in seconds at the model rate (default ``DEFAULT_CHUNK_SEGMENTS`` x the training
        segment); chunks overlap by half (see ``overlap_add``).
      batch_size: chunks per device call (device memory ~ ``batch_size`` chunks; one compile per value).
      outputs: which outputs (default the target estimate only).
      stats: filled with ``chunks``, ``calls`` and ``model_samples`` when given.
      online: chunk by chunk with carried state (online systems; see ``separate_stream``).

    Returns:
      ``(samples,)`` float32 at ``sample_rate``, the input's length (``(samples, len(outputs))`` for several).

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
                                      batch_size=batch_size, outputs=outputs, stats=stats, online=online))
    return np.concatenate(parts).astype(np.float32)


# File-level functions (re-exported: ``inference.separate_file`` etc. are the library API).
from uss_jax.inference_files import (  # pylint: disable=wrong-import-position,unused-import
    read_mixture_list, real_time_factor, separate_file, separate_many, write_separated)
