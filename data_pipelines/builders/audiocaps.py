"""AudioCaps (Kim et al., "AudioCaps: Generating Captions for Audios in The Wild", NAACL 2019) from a local copy,
as array_record, TF-free.

The captions are public (https://github.com/cdjkim/audiocaps, `dataset/{train,val,test}.csv`); the audio is
AudioSet's YouTube segments, which cannot be downloaded by this builder: it is manual-only, like AudioSet.

Metadata folder (`metadata_dir`): train.csv / val.csv / test.csv with columns `audiocap_id, youtube_id, start_time,
caption`, one row per caption (train: mostly 1 caption per clip; val and test: 5).
Audio (`audio_dirs`, searched recursively): one file per clip named by its youtube_id, optionally `Y`-prefixed
(see `audioset.find_youtube_file`). Missing and unreadable clips are skipped and reported, never fatal.

Splits: train / validation / test (train.csv / val.csv / test.csv); by default every CSV present, minus splits
without a single audio file (reported as `splits_without_audio`).

Captions layout: ONE EXAMPLE PER CLIP holding all its captions, so the audio is decoded and stored once and
text-to-audio retrieval sees every reference caption of a clip. Rows are grouped by youtube_id within a split,
clips in order of first appearance, captions in CSV order.

  waveform      Tensor (samples,) int16 PCM or float32 in [-1, 1] at `sample_rate` Hz (soxr HQ), raw bytes
  captions      Tensor (num_captions,) of UTF-8 bytes, all captions of the clip (variable length: 1 in train, 5 in
                val / test; read back as a numpy object array of bytes)
  audiocap_ids  Tensor (num_captions,) int64, the `audiocap_id` of each caption
  caption       Text, the first caption (the labeled_audio `caption` field)
  youtube_id    Text
  start_time    float32, seconds into the YouTube video
  filename      Text, the audio file path relative to the folder it was found in
"""

from __future__ import annotations

import collections
import functools
import os
from typing import Any, Iterator, NamedTuple, Sequence

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from data_pipelines.builders import audioset
from data_pipelines.builders import base
from data_pipelines.builders.base import AudioClipsBuilder, WaveformOptions

__all__ = ["AUDIOCAPS_SPLITS", "AudioCapsRecord", "AudioCapsBuilder", "build_audiocaps", "read_audiocaps_csv"]

# split name -> caption file of https://github.com/cdjkim/audiocaps (dataset/)
AUDIOCAPS_SPLITS = {"train": "train.csv", "validation": "val.csv", "test": "test.csv"}
_COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")
_VERSION = "1.0.0"


class AudioCapsRecord(NamedTuple):
  """One clip with all its captions (no audio read yet)."""

  key: str  # index of the clip's first row in its CSV, zero-padded
  split: str
  path: str  # "" when no file of that youtube_id was found
  filename: str
  youtube_id: str
  start_time: float
  audiocap_ids: tuple[int, ...]
  captions: tuple[str, ...]


def read_audiocaps_csv(path: str | os.PathLike) -> tuple[list[dict[str, Any]], int]:
  """Groups an AudioCaps caption CSV by clip.

  Returns:
    (clips, conflicts): clips in order of first appearance, each {"row": first row index, "youtube_id",
    "start_time" (s), "audiocap_ids": [...], "captions": [...]}; conflicts = number of rows whose start_time
    differs from the clip's first row (the first is kept; the audio file is found by youtube_id alone).

  Raises:
    FileNotFoundError: no file.
    ValueError: missing columns, non-numeric audiocap_id / start_time.
  """
  path = os.fspath(path)
  columns, rows, _ = base.read_csv(path)
  missing = [c for c in _COLUMNS if c not in columns]
  if missing:
    raise ValueError(f"{path} lacks the columns {missing} (columns: {columns})")
  clips: dict[str, dict[str, Any]] = {}
  conflicts = 0
  for i, row in enumerate(rows):
    try:
      cap_id, start = int(row["audiocap_id"]), float(row["start_time"])
    except ValueError as e:
      raise ValueError(f"{path} row {i + 2}: audiocap_id / start_time must be numbers, got "
                       f"{row['audiocap_id']!r}, {row['start_time']!r}") from e
    clip = clips.setdefault(row["youtube_id"], {"row": i, "youtube_id": row["youtube_id"], "start_time": start,
                                                "audiocap_ids": [], "captions": []})
    conflicts += clip["start_time"] != start
    clip["audiocap_ids"].append(cap_id)
    clip["captions"].append(row["caption"])
  return list(clips.values()), conflicts


class AudioCapsBuilder(AudioClipsBuilder, skip_registration=True):
  """AudioCaps from local files -> array_record, one example per clip with all its captions.

  Args (keyword-only):
    options: WaveformOptions.
    data_dir: root folder of the TFDS datasets; files go to `data_dir/audiocaps/config_name/1.0.0/`.
    metadata_dir: folder with train.csv / val.csv / test.csv.
    audio_dirs: folder(s) with the audio files (searched recursively).
    splits: subset of ("train", "validation", "test") (None: every CSV present that has audio).
    config_name: tfds config name (default "sr{sample_rate}_{dtype}").

  Raises:
    ValueError: no metadata_dir / audio_dirs (the audio is not downloadable), unknown split names.
    FileNotFoundError: missing CSV of a requested split, or no CSV at all.
  """

  name = "audiocaps"
  VERSION = tfds.core.Version(_VERSION)
  RELEASE_NOTES = {_VERSION: "AudioCaps from a local copy, all captions of a clip in one example, TF-free."}

  def __init__(self, *, options: WaveformOptions, data_dir: str | os.PathLike,
               metadata_dir: str | os.PathLike | None, audio_dirs: Sequence[str | os.PathLike] | str | None,
               splits: Sequence[str] | None = None, config_name: str | None = None):
    if metadata_dir is None or not audio_dirs:
      raise ValueError(audioset.NOT_DOWNLOADABLE.format(name="AudioCaps"))
    if isinstance(audio_dirs, (str, os.PathLike)):
      audio_dirs = [audio_dirs]
    self.metadata_dir = os.path.abspath(os.fspath(metadata_dir))
    self.audio_dirs = tuple(os.path.abspath(os.fspath(d)) for d in audio_dirs)
    if splits is not None:
      splits = [splits] if isinstance(splits, str) else list(splits)
      unknown = sorted(set(splits) - set(AUDIOCAPS_SPLITS))
      if unknown or not splits:
        raise ValueError(f"unknown AudioCaps splits {unknown or splits}; choose from {list(AUDIOCAPS_SPLITS)}")
    self.requested_splits = None if splits is None else tuple(splits)
    self.csv_paths = {}
    for split, filename in AUDIOCAPS_SPLITS.items():
      path = os.path.join(self.metadata_dir, filename)
      if os.path.isfile(path) and (splits is None or split in splits):
        self.csv_paths[split] = path
      elif splits is not None and split in splits:
        raise FileNotFoundError(f"AudioCaps split {split!r} needs {path}")
    if not self.csv_paths:
      raise FileNotFoundError(f"no AudioCaps caption CSV ({list(AUDIOCAPS_SPLITS.values())}) in {self.metadata_dir}")
    self.records: list[AudioCapsRecord] = []
    self.index_stats: dict[str, Any] = {}
    sources = {"captions": {s: base.file_sha256(p) for s, p in self.csv_paths.items()},
               "requested_splits": None if splits is None else sorted(splits)}
    super().__init__(
        options=options, data_dir=data_dir, config_name=config_name or f"sr{options.sample_rate}_{options.dtype}",
        description=f"AudioCaps at {options.sample_rate} Hz {options.dtype}",
        fingerprint=base.fingerprint_of(options.fingerprint_fields(), sources, _VERSION))

  def _info(self) -> tfds.core.DatasetInfo:
    features = tfds.features.FeaturesDict({
        "waveform": self.waveform_feature(),
        "captions": tfds.features.Tensor(shape=(None,), dtype=np.object_),
        "audiocap_ids": tfds.features.Tensor(shape=(None,), dtype=np.int64),
        "caption": tfds.features.Text(),
        "youtube_id": tfds.features.Text(),
        "start_time": tfds.features.Scalar(dtype=np.float32),
        "filename": tfds.features.Text(),
    })
    return tfds.core.DatasetInfo(
        builder=self,
        description=(f"AudioCaps from a local copy: waveform (samples,) {self.options.dtype} at "
                     f"{self.options.sample_rate} Hz with all captions of the clip."),
        features=features,
        homepage="https://audiocaps.github.io/",
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(sample_rate=self.options.sample_rate, dtype=self.options.dtype,
                                        captions_layout="one example per clip, all captions"),
    )

  def _plan(self) -> dict[str, list[AudioCapsRecord]]:
    stems, relative, duplicates = audioset.index_audio_files(self.audio_dirs)
    by_split: dict[str, list[AudioCapsRecord]] = {}
    conflicts = {}
    for split, path in self.csv_paths.items():
      clips, conflicts[split] = read_audiocaps_csv(path)
      if conflicts[split]:
        logging.warning("%s: %d rows give another start_time than their clip's first row; the first is kept",
                        path, conflicts[split])
      records = []
      for clip in clips:
        stem = audioset.find_youtube_file(stems, clip["youtube_id"])
        records.append(AudioCapsRecord(
            key=f"{clip['row']:08d}", split=split, path=stems[stem] if stem else "",
            filename=relative[stem] if stem else clip["youtube_id"], youtube_id=clip["youtube_id"],
            start_time=clip["start_time"], audiocap_ids=tuple(clip["audiocap_ids"]),
            captions=tuple(clip["captions"])))
      by_split[split] = records
    found = {s: sum(bool(r.path) for r in recs) for s, recs in by_split.items()}
    kept, dropped = audioset.choose_splits(found, self.requested_splits, "AudioCaps")
    self.index_stats = {"audio_files_indexed": len(stems), "duplicate_stems": duplicates,
                        "clips_with_audio": {s: found[s] for s in kept}, "splits_without_audio": dropped,
                        "start_time_conflicts": {s: conflicts[s] for s in kept}}
    return {s: by_split[s] for s in kept}

  def _split_generators(self, dl_manager):
    del dl_manager  # manual-only
    by_split = self._plan()
    self.records = [r for recs in by_split.values() for r in recs]
    self._planned = collections.Counter({s: len(r) for s, r in by_split.items()})
    return {split: self._generate_examples(records) for split, records in by_split.items()}

  def _generate_examples(self, records: Sequence[AudioCapsRecord]) -> Iterator[tuple[str, dict[str, Any]]]:
    for record, waveform in self.decoded(records):
      yield record.key, {
          "waveform": waveform,
          "captions": np.array(record.captions, dtype=object),
          "audiocap_ids": np.array(record.audiocap_ids, dtype=np.int64),
          "caption": record.captions[0],
          "youtube_id": record.youtube_id,
          "start_time": record.start_time,
          "filename": record.filename,
      }

  @property
  def source_description(self) -> str:
    return f"AudioCaps CSVs in {self.metadata_dir} (audio_dirs {list(self.audio_dirs)})"

  def report_extras(self) -> dict[str, Any]:
    return {"metadata_dir": self.metadata_dir, "audio_dirs": list(self.audio_dirs),
            "num_clips": dict(self._planned),
            "num_captions": {s: sum(len(r.captions) for r in self.records if r.split == s) for s in self._planned},
            **self.index_stats}


def build_audiocaps(
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
) -> AudioCapsBuilder:
  """Builds (or reuses) AudioCaps from a local copy as array_record; returns its builder.

  Files go to `data_dir/audiocaps/config_name/1.0.0/` with `build_report.json` (clips and captions per split,
  skipped clips with reasons). A finished build with the same fingerprint (options + CSV digests) is reused.

  Args:
    metadata_dir: folder with train.csv / val.csv / test.csv.
    audio_dirs: folder or folders of audio files named `<youtube_id>.<ext>` or `Y<youtube_id>.<ext>`.
    data_dir: root folder of TFDS datasets.
    sample_rate: stored rate in Hz.
    splits: subset of ("train", "validation", "test"); None: every CSV present whose clips have audio.
    dtype: "int16" or "float32" waveform storage.
    max_duration_s: keep the first seconds of each clip (None: whole clip).
    num_workers: decoding threads.
    config_name: tfds config name (default "sr{sample_rate}_{dtype}").
    overwrite: rebuild when the existing build has another fingerprint (default: raise).

  Returns:
    AudioCapsBuilder: `.as_data_source("test")` -> random-access source of dicts (module docstring).

  Raises:
    ValueError: metadata_dir / audio_dirs missing (not downloadable), unknown splits, a requested split without
      audio, another build in the folder and `overwrite=False`, a split whose found clips are all unreadable.
    FileNotFoundError: missing CSVs or audio folders.
  """
  options = WaveformOptions(sample_rate=sample_rate, dtype=dtype, max_duration_s=max_duration_s,
                            num_workers=num_workers)
  make = functools.partial(AudioCapsBuilder, options=options, data_dir=os.path.abspath(os.fspath(data_dir)),
                           metadata_dir=metadata_dir, audio_dirs=audio_dirs, splits=splits, config_name=config_name)
  return base.prepare_and_report(make(), make, overwrite=overwrite)
