"""Machinery shared by every TFDS audio builder of this project (labeled folder + CSV, ESC-50, AudioSet, ...).

``AudioClipsBuilder`` decodes clips in threads (``data_pipelines.audio_io``: soundfile + soxr), writes waveforms as
``tfds.features.Tensor`` int16 / float32 into array_record (readable without TensorFlow), skips unreadable clips
with a warning and lists every skip in ``build_report.json``; ``prepare_and_report`` reuses a finished build with the
same fingerprint (``fingerprint_of``: build options + source digests) or builds it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import dataclasses
import functools
import hashlib
import json
import os
import re
import time
from typing import Any, Callable, Iterator, Sequence

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import audio_io
from uss_jax import io

REPORT_FILENAME = "build_report.json"
_MAX_SKIP_WARNINGS = 20  # per build; every skipped clip is listed in the report
_VERSION = "1.0.0"
_CONFIG_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")
def read_csv(csv_path: str) -> tuple[list[str], list[dict[str, str]], str]:
  if not os.path.isfile(csv_path):
    raise FileNotFoundError(f"metadata CSV not found: {csv_path}")
  with open(csv_path, "rb") as f:
    raw = f.read()
  text = raw.decode("utf-8-sig")
  reader = csv.DictReader(text.splitlines())
  if reader.fieldnames is None:
    raise ValueError(f"metadata CSV {csv_path} is empty (no header row)")
  columns = [c.strip() for c in reader.fieldnames]
  reader.fieldnames = columns
  rows = [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
  return columns, rows, hashlib.sha256(raw).hexdigest()


def _decode(record: Any, options: Any) -> tuple[Any, np.ndarray | None, str | None]:
  """Decodes `record.path` with the storage options (`sample_rate`, `max_duration_s`, `dtype`) of `options`."""
  if not record.path:
    return record, None, "file not found (no audio file matches this clip)"
  try:
    waveform = audio_io.load_audio(record.path, options.sample_rate, mono=True)
  except audio_io.AudioLoadError as e:
    return record, None, e.reason
  if options.max_duration_s is not None:
    waveform = waveform[: int(round(options.max_duration_s * options.sample_rate))]
  if options.dtype == "int16":
    waveform = audio_io.to_int16(waveform)
  return record, waveform, None


@dataclasses.dataclass(frozen=True)
class WaveformOptions:
  """How the dataset builders (ESC-50, AudioSet, Clotho, AudioCaps, FSD50K) store waveforms.

  Attributes:
    sample_rate: stored rate in Hz; files at another rate are resampled with soxr (HQ).
    dtype: "int16" (PCM, round(x * 32768)) or "float32" storage of the waveform.
    max_duration_s: keep only the first `max_duration_s` seconds of each clip (None: whole clip).
    num_workers: decoding threads (0 or 1: decode in the writer thread).
  """

  sample_rate: int
  dtype: str = "int16"
  max_duration_s: float | None = None
  num_workers: int = 4

  def __post_init__(self):
    if self.dtype not in ("int16", "float32"):
      raise ValueError(f"dtype must be 'int16' or 'float32', got {self.dtype!r}")
    if int(self.sample_rate) <= 0:
      raise ValueError(f"sample_rate must be a positive number of Hz, got {self.sample_rate}")
    object.__setattr__(self, "sample_rate", int(self.sample_rate))
    if self.max_duration_s is not None and self.max_duration_s <= 0:
      raise ValueError(f"max_duration_s must be positive, got {self.max_duration_s}")

  def fingerprint_fields(self) -> dict[str, Any]:
    """The options, JSON-ready (all but `num_workers`, which does not change the stored data)."""
    fields = dataclasses.asdict(self)
    fields.pop("num_workers")
    return fields


def fingerprint_of(options: dict[str, Any], sources: dict[str, Any], version: str) -> str:
  """sha256 of JSON-ready build options, a description of the source files (digests, URLs) and the version."""
  payload = json.dumps({"options": options, "sources": sources, "version": version}, sort_keys=True)
  return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
  """sha256 hex digest of a file's bytes (read in 1 MiB blocks)."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def find_under(root: str | os.PathLike, relative: str, max_depth: int = 2) -> str | None:
  """`root/relative`, else `root/<d1>/relative`, ... down to `max_depth` folder levels (sorted); None if absent.

  Finds the top folder of an extracted archive (e.g. `ESC-50-master/meta/esc50.csv` under a download folder).
  """
  root = os.fspath(root)
  level = [root]
  for _ in range(max_depth + 1):
    for folder in level:
      candidate = os.path.join(folder, relative)
      if os.path.exists(candidate):
        return candidate
    level = [os.path.join(f, d) for f in level if os.path.isdir(f)
             for d in sorted(os.listdir(f)) if os.path.isdir(os.path.join(f, d))]
  return None


class AudioClipsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the array_record audio builders: parallel decoding, skip bookkeeping and the build report.

  A subclass sets `name` / `VERSION`, implements `_info` (using `waveform_feature()`), `_split_generators` (setting
  `self._planned`, a Counter of planned clips per split, and optionally `self._plan_skips`) and
  `_generate_examples`, which iterates `self.decoded(records)`; records are any objects with `path` (str, "" when
  no file was found), `filename` and `split` attributes. `prepare_and_report` builds it.

  Args (keyword-only):
    options: storage options with `sample_rate`, `dtype`, `max_duration_s`, `num_workers` and
      `fingerprint_fields()` (WaveformOptions or LabeledAudioConfig).
    data_dir: root folder of the TFDS datasets; files go to `data_dir/name/config_name/VERSION/`.
    config_name: tfds config name (letters, digits, '_', '.', '-').
    description: the builder config's description.
    fingerprint: digest of everything that determines the stored data (see `fingerprint_of`).

  Raises:
    ValueError: bad config_name.
  """

  name = "audio_clips"
  VERSION = tfds.core.Version(_VERSION)
  # Nothing needs a checksums file next to the code. tfds 4.9.10 looks that file up through `code_path`, whose
  # package branch needs the uninstalled `importlib_resources`; None skips the lookup.
  code_path = None

  def __init__(self, *, options: Any, data_dir: str | os.PathLike, config_name: str, description: str,
               fingerprint: str):
    if not _CONFIG_NAME_RE.match(config_name):
      raise ValueError(f"config_name must match {_CONFIG_NAME_RE.pattern}, got {config_name!r}")
    self.options = options
    self.fingerprint = fingerprint
    self._skipped: list[dict[str, str]] = []
    self._plan_skips: list[dict[str, str]] = []
    self._planned: collections.Counter[str] = collections.Counter()
    builder_config = tfds.core.BuilderConfig(name=config_name, version=str(self.VERSION), description=description)
    super().__init__(data_dir=os.fspath(data_dir), config=builder_config)

  def waveform_feature(self) -> tfds.features.Tensor:
    """Tensor (samples,) int16 or float32 per `options.dtype`, stored as raw bytes (Encoding.BYTES)."""
    dtype = np.int16 if self.options.dtype == "int16" else np.float32
    return tfds.features.Tensor(shape=(None,), dtype=dtype, encoding=tfds.features.Encoding.BYTES)

  def decoded(self, records: Sequence[Any]) -> Iterator[tuple[Any, np.ndarray]]:
    """(record, waveform) for each readable record, input order; unreadable ones are recorded (and logged, the first
    20 of a build one by one).

    Decoding runs on `options.num_workers` threads with a bounded window; waveforms are (samples,) int16 or
    float32 at `options.sample_rate` Hz, cut to `options.max_duration_s`.
    """
    workers = max(1, int(self.options.num_workers))
    decode = functools.partial(_decode, options=self.options)
    results = map(decode, records) if workers == 1 else _bounded_parallel_map(decode, records, workers)
    for record, waveform, reason in results:
      if waveform is None:
        if len(self._skipped) < _MAX_SKIP_WARNINGS:
          logging.warning("Skipping %s: %s", record.path or record.filename, reason)
        elif len(self._skipped) == _MAX_SKIP_WARNINGS:
          logging.warning("Skipping more clips without a warning each; %s will list them all", REPORT_FILENAME)
        self._skipped.append({"filename": record.filename, "split": record.split, "reason": reason})
        continue
      yield record, waveform

  @property
  def source_description(self) -> str:
    """Names the source files in error messages."""
    return self.name

  def report_extras(self) -> dict[str, Any]:
    """Builder-specific fields of build_report.json (called after the build)."""
    return {}

  @property
  def sample_rate(self) -> int:
    """Stored waveform rate in Hz."""
    return self.options.sample_rate

  @property
  def report_path(self) -> str:
    """Path of build_report.json (inside the versioned dataset folder)."""
    return os.path.join(os.fspath(self.data_dir), REPORT_FILENAME)

  @property
  def build_report(self) -> dict[str, Any] | None:
    """The build report (None if the dataset has none)."""
    return load_build_report(self.data_dir)


def _bounded_parallel_map(fn, items: Sequence[Any], workers: int) -> Iterator[Any]:
  """`map(fn, items)` on a thread pool with at most 4 * workers items in flight, order kept."""
  window = 4 * workers
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
    pending: collections.deque = collections.deque()
    for item in items:
      pending.append(pool.submit(fn, item))
      if len(pending) >= window:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()


def load_build_report(dataset_dir: str | os.PathLike) -> dict[str, Any] | None:
  """Reads `build_report.json` from a built dataset's versioned folder (None when absent)."""
  path = io.join(dataset_dir, REPORT_FILENAME)  # local or URL (uss_jax.io)
  if not io.exists(path):
    return None
  return io.read_json(path)


def prepare_and_report(builder: AudioClipsBuilder, rebuild: Callable[[], AudioClipsBuilder], *, overwrite: bool,
                       download_dir: str | os.PathLike | None = None) -> AudioClipsBuilder:
  """Reuses a finished build with the same fingerprint, or builds the dataset and writes build_report.json.

  Args:
    builder: the builder to prepare.
    rebuild: makes a fresh builder of the same arguments (used after deleting a stale build).
    overwrite: delete an existing build made with another fingerprint (default: raise).
    download_dir: where tfds' download manager keeps downloads (default `data_dir/downloads`).

  Returns:
    The prepared builder (`builder`, or the rebuilt one).

  Raises:
    ValueError: an existing build with another fingerprint and `overwrite=False`; every clip of some split
      unreadable (nothing is written then).
  """
  if builder.is_prepared():
    report = builder.build_report
    if report is not None and report.get("fingerprint") == builder.fingerprint:
      logging.info("Reusing %s at %s", builder.name, builder.data_dir)
      return builder
    if not overwrite:
      raise ValueError(
          f"{builder.data_dir} already holds a build from other options or another CSV / source files "
          f"(fingerprint {None if report is None else report.get('fingerprint')} != {builder.fingerprint}); "
          "pass overwrite=True, another config_name, or another data_dir")
    logging.warning("Deleting %s to rebuild it with new options", builder.data_dir)
    io.rmtree(os.fspath(builder.data_dir))
    builder = rebuild()

  start = time.perf_counter()
  try:
    builder.download_and_prepare(
        download_dir=None if download_dir is None else os.fspath(download_dir),
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(try_download_gcs=False),
    )
  except AssertionError as e:  # tfds refuses to write a split of zero examples
    if "No examples were yielded" not in str(e):
      raise
    lost = collections.Counter(s["split"] for s in builder._skipped)
    empty = sorted(split for split, n in builder._planned.items() if lost[split] >= n)
    reasons = collections.Counter(_reason_kind(s["reason"]) for s in builder._skipped if s["split"] in empty)
    raise ValueError(f"no readable audio in split(s) {empty} of {builder.source_description}: all their "
                     f"clips were skipped ({dict(reasons)}); nothing was written") from e
  seconds = time.perf_counter() - start
  skipped = list(builder._skipped) + list(builder._plan_skips)
  report = {
      "name": builder.name,
      "config_name": builder.builder_config.name,
      "dataset_dir": os.fspath(builder.data_dir),
      "fingerprint": builder.fingerprint,
      "options": builder.options.fingerprint_fields(),
      **builder.report_extras(),
      "num_examples": {k: int(v.num_examples) for k, v in builder.info.splits.items()},
      "num_skipped": len(skipped),
      "skipped_by_reason": dict(collections.Counter(_reason_kind(s["reason"]) for s in skipped)),
      "skipped": skipped,
      "build_seconds": round(seconds, 3),
  }
  io.write_text_atomic(builder.report_path, json.dumps(report, indent=1))  # the build is trusted once it exists
  logging.info("Built %s/%s in %.1f s: %s examples, %d skipped %s; report %s", builder.name, report["config_name"],
               seconds, report["num_examples"], report["num_skipped"], report["skipped_by_reason"],
               builder.report_path)
  return builder


def _reason_kind(reason: str) -> str:
  """A short category of an AudioLoadError reason, for counting."""
  for kind in ("file not found", "empty file", "truncated", "not a readable audio file", "decoding failed",
               "no audio frames", "non-finite", "no label"):
    if reason.startswith(kind):
      return kind
  return reason.split(":")[0]
