"""AudioSet (Gemmeke et al., "Audio Set: An ontology and human-labeled dataset for audio events", ICASSP 2017)
from a local copy, as array_record, TF-free.

AudioSet is published as segment lists (https://research.google.com/audioset/download.html); the audio itself is on
YouTube and cannot be downloaded by this builder: bring your own copy (e.g. the PANNs download), the builder is
manual-only.

Metadata folder (`metadata_dir`):

  balanced_train_segments.csv / unbalanced_train_segments.csv / eval_segments.csv
      3 header lines starting with '#', then `YTID, start_seconds, end_seconds, "/m/..,/m/.."` rows
  class_labels_indices.csv
      index, mid, display_name (the 527 classes; class id = index)

Audio (`audio_dirs`, searched recursively): one file per segment named by its YTID, optionally with a `Y` prefix
(the PANNs layout, e.g. `Y--PJHxphWEs.wav`), in any format libsndfile reads (AUDIO_EXTENSIONS). Missing and
unreadable clips are skipped, counted and listed in `build_report.json`, never fatal.

Splits: `balanced_train`, `unbalanced_train`, `eval` (one per segment CSV; by default every CSV present, minus the
splits of which not a single clip has an audio file, which are listed in the report as `splits_without_audio`).

Stored features (one example per readable clip, CSV order within each split):

  waveform       Tensor (samples,) int16 PCM or float32 in [-1, 1] at `sample_rate` Hz (soxr HQ), raw bytes
  label          ClassLabel: the clip's first positive label (names: display names, made unique with the mid)
  labels         Tensor (num_classes,) uint8 multi-hot of all positive labels (527 for AudioSet)
  ytid           Text
  start_seconds  float32
  end_seconds    float32
  filename       Text, the audio file path relative to the audio folder it was found in

`data_pipelines.builders.audiocaps` reuses this module's file index (`index_audio_files`, `find_youtube_file`).
"""

from __future__ import annotations

import collections
import csv
import functools
import os
from typing import Any, Iterator, NamedTuple, Sequence

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from data_pipelines.builders import base
from data_pipelines.builders.base import AudioClipsBuilder, WaveformOptions

__all__ = ["AUDIOSET_SPLITS", "CLASS_LABELS_CSV", "AUDIO_EXTENSIONS", "AudioSetRecord", "AudioSetBuilder",
           "build_audioset", "read_class_labels", "read_segments_csv", "index_audio_files", "find_youtube_file",
           "choose_splits"]

# split name -> segment list of https://research.google.com/audioset/download.html
AUDIOSET_SPLITS = {
    "balanced_train": "balanced_train_segments.csv",
    "unbalanced_train": "unbalanced_train_segments.csv",
    "eval": "eval_segments.csv",
}
CLASS_LABELS_CSV = "class_labels_indices.csv"
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aif", ".aiff")
NOT_DOWNLOADABLE = (
    "{name} audio is not publicly downloadable (the clips live on YouTube), so this builder is manual-only: pass "
    "the folder of its metadata CSVs and the folder(s) of your audio copy, files named by YouTube id (optionally "
    "'Y'-prefixed, the PANNs layout)")
_VERSION = "1.0.0"


class AudioSetRecord(NamedTuple):
  """One segment row (no audio read yet)."""

  key: str  # row index within its CSV, zero-padded
  split: str
  path: str  # "" when no file of that YTID was found
  filename: str  # path relative to its audio folder; the YTID when no file was found
  ytid: str
  start_seconds: float
  end_seconds: float
  label_ids: tuple[int, ...]


def read_class_labels(path: str | os.PathLike) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """Reads class_labels_indices.csv (index, mid, display_name).

  Returns:
    (mids, display_names), both (num_classes,), ordered by index.

  Raises:
    FileNotFoundError: no file.
    ValueError: missing columns, indices that are not 0..n-1 in order, duplicate mids, or no rows.
  """
  path = os.fspath(path)
  columns, rows, _ = base.read_csv(path)
  missing = [c for c in ("index", "mid", "display_name") if c not in columns]
  if missing:
    raise ValueError(f"{path} lacks the columns {missing} (columns: {columns})")
  if not rows:
    raise ValueError(f"{path} has no rows")
  for i, row in enumerate(rows):
    if row["index"] != str(i):
      raise ValueError(f"{path} row {i + 2}: index {row['index']!r}, expected {i} (rows must be ordered by index)")
  mids = tuple(row["mid"] for row in rows)
  if len(set(mids)) != len(mids):
    raise ValueError(f"{path} has duplicate mids")
  return mids, tuple(row["display_name"] for row in rows)


def _unique_names(mids: Sequence[str], names: Sequence[str]) -> tuple[str, ...]:
  """Display names, with " (mid)" appended to those that occur more than once (ClassLabel needs unique names)."""
  counts = collections.Counter(names)
  return tuple(f"{n} ({m})" if counts[n] > 1 else n for m, n in zip(mids, names))


def read_segments_csv(path: str | os.PathLike) -> list[tuple[str, float, float, list[str]]]:
  """Reads an AudioSet segment list: '#' comment lines, then `YTID, start_seconds, end_seconds, "mid,mid"` rows.

  Returns:
    [(ytid, start_seconds, end_seconds, [mid, ...]), ...] in file order.

  Raises:
    FileNotFoundError: no file.
    ValueError: a row without 4 fields or with non-numeric times.
  """
  path = os.fspath(path)
  out = []
  with open(path, newline="", encoding="utf-8") as f:
    lines = (line for line in f if line.strip() and not line.lstrip().startswith("#"))
    for row in csv.reader(lines, skipinitialspace=True):
      if len(row) != 4:
        raise ValueError(f"{path}: expected YTID, start_seconds, end_seconds, positive_labels; got {row}")
      ytid, start, end, labels = (v.strip() for v in row)
      try:
        start_s, end_s = float(start), float(end)
      except ValueError as e:
        raise ValueError(f"{path}: non-numeric times in {row}") from e
      out.append((ytid, start_s, end_s, [m.strip() for m in labels.split(",") if m.strip()]))
  return out


def index_audio_files(audio_dirs: Sequence[str | os.PathLike]) -> tuple[dict[str, str], dict[str, str], int]:
  """Maps file stems to audio files under `audio_dirs` (recursive walk, folders in the given order, names sorted).

  Returns:
    (paths, relative, duplicates): stem -> absolute path, stem -> path relative to its audio folder, and the
    number of files whose stem was already taken (the first one found is kept).

  Raises:
    FileNotFoundError: an audio folder that does not exist.
  """
  paths: dict[str, str] = {}
  relative: dict[str, str] = {}
  duplicates = 0
  for folder in audio_dirs:
    folder = os.path.abspath(os.fspath(folder))
    if not os.path.isdir(folder):
      raise FileNotFoundError(f"audio folder does not exist: {folder}")
    for dirpath, dirnames, filenames in os.walk(folder):
      dirnames.sort()
      for name in sorted(filenames):
        stem, ext = os.path.splitext(name)
        if ext.lower() not in AUDIO_EXTENSIONS:
          continue
        if stem in paths:
          duplicates += 1
          continue
        paths[stem] = os.path.join(dirpath, name)
        relative[stem] = os.path.relpath(paths[stem], folder)
  return paths, relative, duplicates


def find_youtube_file(stems: dict[str, str], ytid: str) -> str | None:
  """The stem of the file holding YouTube id `ytid`: `ytid` itself, else `Y` + ytid (PANNs); None when absent."""
  for stem in (ytid, "Y" + ytid):
    if stem in stems:
      return stem
  return None


def choose_splits(found: dict[str, int], requested: Sequence[str] | None, what: str) -> tuple[list[str], list[str]]:
  """Which splits to build given how many clips of each have an audio file.

  Args:
    found: split -> number of clips with an audio file.
    requested: splits asked for explicitly (None: all of `found`).
    what: dataset name for the error message.

  Returns:
    (kept, dropped): explicitly requested splits are all kept; by default, splits without a single audio file are
    dropped.

  Raises:
    ValueError: a requested split without any audio file, or nothing left to build.
  """
  if requested is not None:
    empty = [s for s in requested if found.get(s, 0) == 0]
    if empty:
      raise ValueError(f"{what}: no audio file found for any clip of the requested split(s) {empty}")
    return list(requested), []
  kept = [s for s, n in found.items() if n > 0]
  dropped = [s for s, n in found.items() if n == 0]
  if not kept:
    raise ValueError(f"{what}: no audio file found for any clip of {sorted(found)} in the audio folders")
  if dropped:
    logging.warning("%s: no audio file for any clip of %s; those splits are left out", what, dropped)
  return kept, dropped


class AudioSetBuilder(AudioClipsBuilder, skip_registration=True):
  """AudioSet from local files -> array_record (see the module docstring for layout and features).

  Args (keyword-only):
    options: WaveformOptions.
    data_dir: root folder of the TFDS datasets; files go to `data_dir/audioset/config_name/1.0.0/`.
    metadata_dir: folder with the segment CSVs and class_labels_indices.csv.
    audio_dirs: folder(s) with the audio files (searched recursively).
    splits: subset of AUDIOSET_SPLITS to build (None: every CSV present that has audio).
    config_name: tfds config name (default "sr{sample_rate}_{dtype}").

  Raises:
    ValueError: no metadata_dir / audio_dirs (AudioSet audio is not downloadable), unknown split names.
    FileNotFoundError: missing class_labels_indices.csv, missing CSV of a requested split, no CSV at all.
  """

  name = "audioset"
  VERSION = tfds.core.Version(_VERSION)
  RELEASE_NOTES = {_VERSION: "AudioSet from a local copy, multi-hot labels, TF-free features."}

  def __init__(self, *, options: WaveformOptions, data_dir: str | os.PathLike,
               metadata_dir: str | os.PathLike | None, audio_dirs: Sequence[str | os.PathLike] | str | None,
               splits: Sequence[str] | None = None, config_name: str | None = None):
    if metadata_dir is None or not audio_dirs:
      raise ValueError(NOT_DOWNLOADABLE.format(name="AudioSet"))
    if isinstance(audio_dirs, (str, os.PathLike)):
      audio_dirs = [audio_dirs]
    self.metadata_dir = os.path.abspath(os.fspath(metadata_dir))
    self.audio_dirs = tuple(os.path.abspath(os.fspath(d)) for d in audio_dirs)
    if splits is not None:
      splits = [splits] if isinstance(splits, str) else list(splits)
      unknown = sorted(set(splits) - set(AUDIOSET_SPLITS))
      if unknown or not splits:
        raise ValueError(f"unknown AudioSet splits {unknown or splits}; choose from {list(AUDIOSET_SPLITS)}")
    self.requested_splits = None if splits is None else tuple(splits)
    labels_csv = os.path.join(self.metadata_dir, CLASS_LABELS_CSV)
    self.class_mids, self.display_names = read_class_labels(labels_csv)
    self.csv_paths = {}
    for split, filename in AUDIOSET_SPLITS.items():
      path = os.path.join(self.metadata_dir, filename)
      if os.path.isfile(path) and (splits is None or split in splits):
        self.csv_paths[split] = path
      elif splits is not None and split in splits:
        raise FileNotFoundError(f"AudioSet split {split!r} needs {path}")
    if not self.csv_paths:
      raise FileNotFoundError(f"no AudioSet segment CSV ({list(AUDIOSET_SPLITS.values())}) in {self.metadata_dir}")
    self.records: list[AudioSetRecord] = []
    self.index_stats: dict[str, Any] = {}
    sources = {"class_labels": base.file_sha256(labels_csv),
               "segments": {s: base.file_sha256(p) for s, p in self.csv_paths.items()},
               "requested_splits": None if splits is None else sorted(splits)}
    super().__init__(
        options=options, data_dir=data_dir, config_name=config_name or f"sr{options.sample_rate}_{options.dtype}",
        description=f"AudioSet at {options.sample_rate} Hz {options.dtype}",
        fingerprint=base.fingerprint_of(options.fingerprint_fields(), sources, _VERSION))

  @property
  def class_names(self) -> tuple[str, ...]:
    """ClassLabel names: display names (made unique with the mid where repeated); class id = index."""
    return _unique_names(self.class_mids, self.display_names)

  def _info(self) -> tfds.core.DatasetInfo:
    num_classes = len(self.class_mids)
    features = tfds.features.FeaturesDict({
        "waveform": self.waveform_feature(),
        "label": tfds.features.ClassLabel(names=list(self.class_names)),
        "labels": tfds.features.Tensor(shape=(num_classes,), dtype=np.uint8),
        "ytid": tfds.features.Text(),
        "start_seconds": tfds.features.Scalar(dtype=np.float32),
        "end_seconds": tfds.features.Scalar(dtype=np.float32),
        "filename": tfds.features.Text(),
    })
    return tfds.core.DatasetInfo(
        builder=self,
        description=(f"AudioSet from a local copy: waveform (samples,) {self.options.dtype} at "
                     f"{self.options.sample_rate} Hz, {num_classes} classes (multi-hot)."),
        features=features,
        homepage="https://research.google.com/audioset/",
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(sample_rate=self.options.sample_rate, dtype=self.options.dtype,
                                        class_names=list(self.class_names), class_mids=list(self.class_mids)),
    )

  def _plan(self) -> dict[str, list[AudioSetRecord]]:
    class_id = {m: i for i, m in enumerate(self.class_mids)}
    stems, relative, duplicates = index_audio_files(self.audio_dirs)
    by_split: dict[str, list[AudioSetRecord]] = {}
    unknown: collections.Counter[str] = collections.Counter()
    unlabeled = []
    for split, path in self.csv_paths.items():
      records = []
      for i, (ytid, start, end, mids) in enumerate(read_segments_csv(path)):
        ids = tuple(class_id[m] for m in mids if m in class_id)
        unknown.update(m for m in mids if m not in class_id)
        if not ids:
          unlabeled.append({"filename": ytid, "split": split, "reason": "no label in CSV"})
          continue
        stem = find_youtube_file(stems, ytid)
        records.append(AudioSetRecord(
            key=f"{i:08d}", split=split, path=stems[stem] if stem else "",
            filename=relative[stem] if stem else ytid, ytid=ytid, start_seconds=start, end_seconds=end,
            label_ids=ids))
      by_split[split] = records
    if unknown:
      raise ValueError(f"AudioSet segment CSVs in {self.metadata_dir} use mids missing from {CLASS_LABELS_CSV}: "
                       f"{sorted(unknown)[:20]}")
    found = {s: sum(bool(r.path) for r in recs) for s, recs in by_split.items()}
    kept, dropped = choose_splits(found, self.requested_splits, "AudioSet")
    self._plan_skips = [s for s in unlabeled if s["split"] in kept]
    self.index_stats = {"audio_files_indexed": len(stems), "duplicate_stems": duplicates,
                        "clips_with_audio": {s: found[s] for s in kept}, "splits_without_audio": dropped}
    return {s: by_split[s] for s in kept}

  def _split_generators(self, dl_manager):
    del dl_manager  # manual-only: the constructor already refused a missing copy
    by_split = self._plan()
    self.records = [r for recs in by_split.values() for r in recs]
    self._planned = collections.Counter({s: len(r) for s, r in by_split.items()})
    return {split: self._generate_examples(records) for split, records in by_split.items()}

  def _generate_examples(self, records: Sequence[AudioSetRecord]) -> Iterator[tuple[str, dict[str, Any]]]:
    num_classes = len(self.class_mids)
    for record, waveform in self.decoded(records):
      multi_hot = np.zeros((num_classes,), np.uint8)
      multi_hot[list(record.label_ids)] = 1
      yield record.key, {
          "waveform": waveform, "label": record.label_ids[0], "labels": multi_hot, "ytid": record.ytid,
          "start_seconds": record.start_seconds, "end_seconds": record.end_seconds, "filename": record.filename,
      }

  @property
  def source_description(self) -> str:
    return f"AudioSet CSVs in {self.metadata_dir} (audio_dirs {list(self.audio_dirs)})"

  def report_extras(self) -> dict[str, Any]:
    return {"metadata_dir": self.metadata_dir, "audio_dirs": list(self.audio_dirs),
            "num_rows": {s: n for s, n in self._planned.items()}, **self.index_stats}


def build_audioset(
    metadata_dir: str | os.PathLike | None,
    audio_dirs: Sequence[str | os.PathLike] | str | os.PathLike | None,
    data_dir: str | os.PathLike,
    sample_rate: int,
    *,
    splits: Sequence[str] | None = None,
    dtype: str = "int16",
    max_duration_s: float | None = None,
    num_workers: int = 4,
    config_name: str | None = None,
    overwrite: bool = False,
) -> AudioSetBuilder:
  """Builds (or reuses) AudioSet from a local copy as array_record; returns its builder.

  Files go to `data_dir/audioset/config_name/1.0.0/` with `build_report.json` (per split: rows, clips with audio,
  examples; every skipped clip with its reason: "file not found", "truncated", ...). A finished build with the same
  fingerprint (options + digests of the CSVs; the audio files are not hashed) is reused.

  Args:
    metadata_dir: folder with the segment CSVs and class_labels_indices.csv.
    audio_dirs: folder or folders of audio files named `<YTID>.<ext>` or `Y<YTID>.<ext>` (searched recursively).
    data_dir: root folder of TFDS datasets.
    sample_rate: stored rate in Hz (soxr HQ resampling when files differ).
    splits: subset of ("balanced_train", "unbalanced_train", "eval"); None: every CSV present whose clips have audio.
    dtype: "int16" or "float32" waveform storage.
    max_duration_s: keep the first seconds of each clip (None: whole clip).
    num_workers: decoding threads.
    config_name: tfds config name (default "sr{sample_rate}_{dtype}").
    overwrite: rebuild when the existing build has another fingerprint (default: raise).

  Returns:
    AudioSetBuilder: `.as_data_source("balanced_train")` -> random-access source of dicts (module docstring);
    `.class_names`, `.class_mids`; `.build_report`.

  Raises:
    ValueError: metadata_dir / audio_dirs missing (not downloadable), unknown splits, unknown mids in the CSVs, a
      requested split without audio, another build in the folder and `overwrite=False`, a split whose found clips
      are all unreadable.
    FileNotFoundError: missing metadata files or audio folders.
  """
  options = WaveformOptions(sample_rate=sample_rate, dtype=dtype, max_duration_s=max_duration_s,
                            num_workers=num_workers)
  make = functools.partial(AudioSetBuilder, options=options, data_dir=os.path.abspath(os.fspath(data_dir)),
                           metadata_dir=metadata_dir, audio_dirs=audio_dirs, splits=splits, config_name=config_name)
  return base.prepare_and_report(make(), make, overwrite=overwrite)
