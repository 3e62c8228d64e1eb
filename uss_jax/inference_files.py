"""File-level separation on top of ``uss_jax.inference.Separator``: atomic multi-output writing, one file, a list of
files with one compile, and the real-time factor.

Every output is written to a temporary file beside its final path and renamed when complete, so a failure never
leaves a partial file. Output files: mono, at the input's sample rate and length, 32-bit float (``FLOAT``) by default
when the format has it (no clipping); integer PCM subtypes (``PCM_16`` ...) get the signal clipped to [-1, 1].
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from uss_jax.audio.streaming import _clips, _sf, audio_info, check_mixture, output_format, plot_spectrograms, \
    read_blocks, read_mono

if TYPE_CHECKING:
  from uss_jax.inference import Separator

DEFAULT_BATCH_SIZE = 8  # chunks per device call (uss_jax.inference.DEFAULT_BATCH_SIZE)



def _check_outputs(outputs: dict[str, str]) -> None:
  paths = [os.path.abspath(p) for p in outputs.values()]
  if len(set(paths)) != len(paths):
    raise ValueError(f"two outputs would be written to the same file: {sorted(outputs.values())}")


def write_separated(separator: Separator, mixture: str | os.PathLike, outputs: dict[str, str], condition: Any, *,
                    chunk_seconds: float | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                    subtype: str | None = None, online: bool = False) -> dict[str, Any]:
  """Streams ``mixture`` through the separator and writes the requested outputs, each atomically.

  Args:
    separator: the model. mixture: input file (any soundfile format, rate and channel count; mono-mixed).
    outputs: ``{output name: path}`` (names from ``separator.outputs``); each file mono, at the mixture's rate and
      length, written to a temporary file beside it and renamed at the end (a failure leaves no partial file).
    condition: ``(condition_size,)``. chunk_seconds, batch_size: as ``Separator.separate``.
    subtype: soundfile subtype (default ``FLOAT`` where the format has it; integer PCM clips to [-1, 1]).
    online: chunk by chunk with carried state (online systems, ``Separator.separate_stream``).

  Returns:
    ``{'samples', 'chunks', 'peak', 'clipped_samples', 'subtype'}`` of the first output, and the wall time
    ``separate_s``; online also ``chunk_samples``, ``compile_s`` and ``stream_s`` (seconds in the chunk steps).

  Raises:
    FileNotFoundError / ValueError: a missing or bad file, an unknown output. FloatingPointError: NaN / inf output.
  """
  mixture = os.fspath(mixture)
  names = list(outputs)
  formats = {n: output_format(p, subtype) for n, p in outputs.items()}
  _check_outputs(outputs)
  sr, frames = check_mixture(mixture)
  sf = _sf()
  tmps: dict[str, str] = {}
  stats: dict[str, int] = {}
  peak, clipped, written = 0.0, 0, 0
  t0 = time.perf_counter()
  try:
    files = {}
    for n, p in outputs.items():
      out_dir = os.path.dirname(os.path.abspath(p))
      os.makedirs(out_dir, exist_ok=True)
      fd, tmps[n] = tempfile.mkstemp(prefix=".uss-jax-", suffix=os.path.splitext(p)[1], dir=out_dir)
      os.close(fd)
      fmt, sub = formats[n]
      files[n] = sf.SoundFile(tmps[n], "w", samplerate=sr, channels=1, format=fmt, subtype=sub)
    try:
      blocks, _, _ = read_blocks(mixture, "mixture")
      for block in separator.separate_stream(blocks, sr, condition, chunk_seconds=chunk_seconds,
                                             batch_size=batch_size, outputs=names, stats=stats, online=online):
        block = block.reshape(len(block), -1)
        for i, n in enumerate(names):
          y = block[:, i]
          sub = formats[n][1]
          if i == 0:
            peak = max(peak, float(np.max(np.abs(y))) if len(y) else 0.0)
            written += len(y)
          if _clips(sub):
            if i == 0:
              clipped += int(np.sum(np.abs(y) > 1.0))
            y = np.clip(y, -1.0, 1.0)
          files[n].write(y)
    finally:
      for f in files.values():
        f.close()
    for n, p in outputs.items():
      os.replace(tmps.pop(n), p)
  finally:
    for tmp in tmps.values():
      if os.path.exists(tmp):
        os.remove(tmp)
  result = {"sample_rate": sr, "seconds": round(frames / sr, 3), "samples": written,
            "chunks": stats.get("chunks", 0), "peak": round(peak, 4), "clipped_samples": clipped,
            "subtype": formats[names[0]][1], "separate_s": round(time.perf_counter() - t0, 3)}
  if online:
    result.update(chunk_samples=stats["chunk_samples"], compile_s=round(stats["compile_s"], 3),
                  stream_s=round(stats["stream_s"], 3))
  return result


def separate_file(separator: Separator, mixture: str | os.PathLike, output: str | os.PathLike, *,
                  query_audio: Sequence[str | os.PathLike] | None = None, query_class: str | None = None,
                  query_text: str | None = None, query_separator: Separator | None = None,
                  extra_outputs: dict[str, str] | None = None, chunk_seconds: float | None = None,
                  batch_size: int = DEFAULT_BATCH_SIZE, subtype: str | None = None,
                  plot: str | os.PathLike | None = None, online: bool = False) -> dict[str, Any]:
  """Separates an audio file with one query and writes the result (streaming, see the module docstring).

  Args:
    separator: the model.
    mixture: input file (any soundfile format, rate and channel count; mono-mixed).
    output: the target estimate's file (the system's first output), mono at the mixture's rate and length.
    query_audio / query_class / query_text: exactly one query (recordings whose embeddings are averaged, a class
      name, a sentence).
    query_separator: another run whose query encoder computes the condition (equal condition spaces required).
    extra_outputs: ``{output name: path}`` for the system's other outputs (SoundFilter's ``'suppressed'``).
    chunk_seconds, batch_size: see ``Separator.separate``. subtype: see ``write_separated``.
    plot: if given, a PNG of mixture and result spectrograms (reads both files whole).
    online: run an online system (Waveformer) chunk by chunk with carried state (``Separator.separate_stream``);
      ``chunk_seconds`` / ``batch_size`` do not apply.

  Returns:
    A summary dict (files, rates, seconds, query, chunks, wall time and real-time factor, peak, clipped samples).
    Offline, ``real_time_factor`` = ``separate_s`` (compilation included) / ``seconds``; online it leaves out the
    compiling warm-up step (``compile_s``), and ``chunk_ms`` (the chunk's duration: the latency of one step) and
    ``step_ms`` (mean wall time per chunk step; below ``chunk_ms`` keeps up with real time) are added.

  Raises:
    FileNotFoundError / ValueError: missing or bad files, unknown class, silent query, NaN, not exactly one query,
      incompatible query run. FloatingPointError: the model produced NaN / inf.
  """
  mixture, output = os.fspath(mixture), os.fspath(output)
  outputs = {separator.outputs[0]: output, **{k: os.fspath(v) for k, v in (extra_outputs or {}).items()}}
  for name in outputs:
    separator._outputs([name])  # pylint: disable=protected-access  (names an unknown output before any work)
  for p in outputs.values():
    output_format(p, subtype)
  _check_outputs(outputs)
  check_mixture(mixture)
  for q in query_audio or ():
    audio_info(q, "query")
  if online:
    separator.require_online()
  t0 = time.perf_counter()
  condition, query = separator.condition(audio=query_audio, class_name=query_class, text=query_text,
                                         query_separator=query_separator)
  t1 = time.perf_counter()
  written = write_separated(separator, mixture, outputs, condition, chunk_seconds=chunk_seconds,
                            batch_size=batch_size, subtype=subtype, online=online)
  summary = {
      "mixture": mixture, "output": output, "query": query, "checkpoint": separator.description,
      "step": separator.step, "model_sample_rate": separator.sample_rate, **written,
      "chunk_seconds": separator.chunk_samples(chunk_seconds) / separator.sample_rate, "batch_size": batch_size,
      "query_s": round(t1 - t0, 3),  # separate_s: compilation included
      "real_time_factor": round(written["separate_s"] / max(written["seconds"], 1e-9), 4),
  }
  if online:
    chunk = written["chunk_samples"]
    del summary["chunk_seconds"], summary["batch_size"]
    summary.update(stream=True, chunk_ms=round(1e3 * chunk / separator.sample_rate, 3),
                   step_ms=round(1e3 * written["stream_s"] / max(written["chunks"], 1), 3),
                   real_time_factor=round((written["separate_s"] - written["compile_s"]) /
                                          max(written["seconds"], 1e-9), 4))
  if len(outputs) > 1:
    summary["outputs"] = outputs
  if query_separator is not None and query_separator is not separator:
    summary["query_checkpoint"] = query_separator.description
  if plot is not None:
    mix, sr = read_mono(mixture, "mixture")
    est, _ = read_mono(output, "output")
    plot_spectrograms(mix, est, sr, plot, query)
    summary["plot"] = os.fspath(plot)
  return summary


def read_mixture_list(path: str | os.PathLike) -> list[str]:
  """The audio files named in a text file, one per line (blank lines and ``#`` comments skipped; relative paths are
  relative to the list's folder).

  Raises:
    FileNotFoundError: the list or a named file is missing. ValueError: the list names no file or a file twice.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"mixture list not found: {path}")
  base = os.path.dirname(os.path.abspath(path))
  files = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, start=1):
      line = line.strip()
      if not line or line.startswith("#"):
        continue
      p = line if os.path.isabs(line) else os.path.join(base, line)
      if not os.path.isfile(p):
        raise FileNotFoundError(f"{path}:{n}: mixture not found: {line}")
      files.append(p)
  if not files:
    raise ValueError(f"{path} names no mixture")
  stems = [os.path.splitext(os.path.basename(p))[0] for p in files]
  dup = next((s for s in stems if stems.count(s) > 1), None)
  if dup is not None:
    raise ValueError(f"{path}: two mixtures share the name {dup!r}; their outputs would collide in --out-dir")
  return files


def separate_many(separator: Separator, mixtures: Sequence[str], out_dir: str | os.PathLike, condition: Any, *,
                  suffix: str = ".wav", extra_outputs: Sequence[str] = (), chunk_seconds: float | None = None,
                  batch_size: int = DEFAULT_BATCH_SIZE, subtype: str | None = None,
                  progress: bool = True, online: bool = False) -> list[dict[str, Any]]:
  """Separates many files with one condition: ``<out_dir>/<stem><suffix>`` (and ``<stem>_<output><suffix>`` for
  ``extra_outputs``), one compile for all files (fixed chunk and batch shapes), a tqdm progress bar; ``online``: each
  file chunk by chunk with carried state (``write_separated``).

  Returns:
    one ``write_separated`` summary per file (with ``mixture`` and ``output``).

  Raises:
    FileNotFoundError / ValueError: as ``write_separated`` (the file is named).
  """
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel

  results = []
  for mixture in tqdm(list(mixtures), desc="separate", unit="file", disable=not progress):
    stem = os.path.splitext(os.path.basename(mixture))[0]
    outputs = {separator.outputs[0]: os.path.join(out_dir, stem + suffix)}
    outputs.update({o: os.path.join(out_dir, f"{stem}_{o}{suffix}") for o in extra_outputs})
    summary = write_separated(separator, mixture, outputs, condition, chunk_seconds=chunk_seconds,
                              batch_size=batch_size, subtype=subtype, online=online)
    results.append({"mixture": mixture, "output": outputs[separator.outputs[0]], **summary})
  return results


def real_time_factor(separator: Separator, seconds: float = 60.0, *, sample_rate: int | None = None,
                     condition: Any = None, chunk_seconds: float | None = None,
                     batch_size: int = DEFAULT_BATCH_SIZE, repeats: int = 3, seed: int = 0) -> dict[str, Any]:
  """Wall time of ``Separator.separate`` on a ``seconds`` long noise mixture, over its duration (the RTF).

  The first call (compilation included) is reported separately as ``first_call_s``; then ``repeats`` timed calls.
  Host work (resampling when ``sample_rate`` differs from the model's, chunking, overlap-add) is included, as in
  real use; the result is a numpy array, so the device work has finished when the clock stops.

  Args:
    separator: the model (e.g. ``Separator.from_workdir`` or a freshly built system).
    seconds: mixture duration in seconds.
    sample_rate: mixture rate in Hz (default the model's: no resampling).
    condition: ``(condition_size,)``; default a fixed random unit-norm vector.
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
