"""TFDS builder for "a folder of audio files + a CSV", written as array_record and readable without TensorFlow.

A CSV row names one clip (`filename`, relative to `audio_dir`) and its labels, either as a single `class_label`
column or as a `labels` column of ';'- or ','-separated class names; optional columns: `caption`, `split`
(train / validation / test), `fold`, and a group column (`source_group`) naming the recording a clip was cut from.

Stored features (one example per readable clip, CSV order within each split):

  waveform  Tensor (samples,) int16 PCM or float32 in [-1, 1], at `sample_rate` Hz (soxr HQ resampling at build time);
            stored as raw bytes (Encoding.BYTES: ~10x faster to write than tfds' default int64/float lists, smaller),
            read back as a read-only numpy view: copy before writing into it
  label     ClassLabel (int64 class id of the first label; names in `builder.class_names`)
  labels    Tensor (num_classes,) uint8 multi-hot over all labels of the clip
  caption   Text ("" when the CSV has no caption)
  filename  Text (as written in the CSV)
  group     Text (the clip's group; the filename when the CSV has no group column)

Only `tfds.features.Tensor`, `ClassLabel` and `Text` are used: none of them imports TensorFlow, and
`tfds.features.Audio` (which does) is avoided, so building and `as_data_source` reading never import it
(see /work/shared/design/FACTS.md). Text features read back as `bytes`.

Splits: `holdout_folds` (fold column values sent to `test`) when given; else the CSV split column when every row
holds train / validation / test (aliases: val, valid, eval, evaluation); else a deterministic group-disjoint
train / test holdout stratified by class (`stratified_group_holdout`).

Unreadable clips (missing, empty, truncated, not audio; `data_pipelines.audio_io.AudioLoadError`) are skipped with
a warning; rows without a label are skipped at planning time. Both are counted in `build_report.json`, written next
to the dataset files and logged.

Shared with the dataset builders (esc50, audioset, clotho, audiocaps, fsd50k in this package): `AudioClipsBuilder`
(threaded decoding with skip bookkeeping), `WaveformOptions` (storage options), `prepare_and_report` (reuse by
fingerprint, build, report), `fingerprint_of`, `file_sha256` and `find_under`.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import functools
import hashlib
import json
import os
import re
import types
import zlib
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines.builders.base import (
    AudioClipsBuilder,
    _VERSION,
    file_sha256,
    find_under,
    fingerprint_of,
    load_build_report,
    prepare_and_report,
    read_csv,
)
from uss_jax import io

__all__ = [
    "LabeledAudioConfig",
    "ClipRecord",
    "LabeledAudioPlan",
    "LabeledAudioBuilder",
    "plan_labeled_audio",
    "stratified_group_holdout",
    "build_labeled_audio",
]

_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "test": "test",
    "eval": "test",
    "evaluation": "test",
}
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class LabeledAudioConfig:
  """What to build: sources, target format and how to split.

  Attributes:
    audio_dir: folder holding the audio files (CSV filenames are relative to it).
    csv_path: the metadata CSV (UTF-8, header row).
    sample_rate: stored rate in Hz; files at another rate are resampled with soxr (HQ).
    dtype: "int16" (PCM, round(x * 32768)) or "float32" storage of the waveform.
    class_names: the class list (id = position). Default: from a `class_index` column when present (so ids match
      the corpus), else the sorted unique labels of the CSV.
    holdout_fraction: share of each class's clips (whole groups) sent to `test` by the group holdout, in [0, 1).
    group_column: column naming the clip's source; default "source_group" when present, else the filename.
    split_column: column with train / validation / test values; default "split" when present.
    fold_column: column with fold ids; default "fold" when present. Used only with `holdout_folds`.
    holdout_folds: fold values (compared as strings) whose rows form `test`; all other rows form `train`.
    filename_column: column with the file name (default "filename").
    label_column: "class_label" holds one name per row; any other column (default "labels" when present, else
      "class_label") holds a list of names, the first one giving `label`.
    label_separator: separator of a list column; default ';' when any value holds one, else ','.
    caption_column: default "caption" when present; "" stored otherwise.
    max_duration_s: keep only the first `max_duration_s` seconds of each clip (None: whole clip).
    split_seed: salt of the group hash of the holdout (changes which groups are held out).
    num_workers: decoding threads (0 or 1: decode in the writer thread).
  """

  audio_dir: str
  csv_path: str
  sample_rate: int
  dtype: str = "int16"
  class_names: tuple[str, ...] | None = None
  holdout_fraction: float = 0.2
  group_column: str | None = None
  split_column: str | None = None
  fold_column: str | None = None
  holdout_folds: tuple[str, ...] | None = None
  filename_column: str = "filename"
  label_column: str | None = None
  label_separator: str | None = None
  caption_column: str | None = None
  max_duration_s: float | None = None
  split_seed: int = 0
  num_workers: int = 4

  def __post_init__(self):
    object.__setattr__(self, "audio_dir", os.fspath(self.audio_dir))
    object.__setattr__(self, "csv_path", os.fspath(self.csv_path))
    if self.class_names is not None:
      object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
    if self.holdout_folds is not None:
      folds = (self.holdout_folds,) if isinstance(self.holdout_folds, (str, int)) else self.holdout_folds
      object.__setattr__(self, "holdout_folds", tuple(str(f).strip() for f in folds))
    if self.dtype not in ("int16", "float32"):
      raise ValueError(f"dtype must be 'int16' or 'float32', got {self.dtype!r}")
    if int(self.sample_rate) <= 0:
      raise ValueError(f"sample_rate must be a positive number of Hz, got {self.sample_rate}")
    object.__setattr__(self, "sample_rate", int(self.sample_rate))
    if not 0.0 <= self.holdout_fraction < 1.0:
      raise ValueError(f"holdout_fraction must lie in [0, 1), got {self.holdout_fraction}")
    if self.max_duration_s is not None and self.max_duration_s <= 0:
      raise ValueError(f"max_duration_s must be positive, got {self.max_duration_s}")

  def fingerprint_fields(self) -> dict[str, Any]:
    """The options, JSON-ready (all but `num_workers`, which does not change the stored data)."""
    fields = dataclasses.asdict(self)
    fields.pop("num_workers")
    for key in ("class_names", "holdout_folds"):
      if fields[key] is not None:
        fields[key] = list(fields[key])
    return fields


class ClipRecord(NamedTuple):
  """One planned example (no audio read yet)."""

  key: str  # unique tfds key: the CSV row index, zero-padded
  filename: str  # as written in the CSV
  path: str  # audio_dir / filename
  label_ids: tuple[int, ...]  # class ids, CSV order; the first is `label`
  caption: str
  group: str
  split: str


@dataclasses.dataclass(frozen=True)
class LabeledAudioPlan:
  """The CSV resolved into a class list and per-split clip records (no audio read yet).

  Attributes:
    class_names: tuple of class names; class id = position.
    records: ClipRecords of the labeled rows, CSV order.
    split_source: "folds", "csv" or "holdout" (how splits were assigned).
    unlabeled: filenames of rows without any label (not built).
    csv_sha256: digest of the CSV bytes (part of the build fingerprint).
  """

  class_names: tuple[str, ...]
  records: tuple[ClipRecord, ...]
  split_source: str
  unlabeled: tuple[str, ...]
  csv_sha256: str

  def split_records(self) -> dict[str, list[ClipRecord]]:
    """Records per split name, CSV order, empty splits left out."""
    out: dict[str, list[ClipRecord]] = {}
    for record in self.records:
      out.setdefault(record.split, []).append(record)
    return out


def _group_hash(group: str, seed: int) -> int:
  return zlib.crc32(f"{seed}:{group}".encode("utf-8"))


def stratified_group_holdout(
    groups: Sequence[str],
    first_labels: Sequence[int],
    holdout_fraction: float,
    seed: int = 0,
) -> set[str]:
  """Chooses the held-out groups: deterministic, group-disjoint, stratified by class.

  Each group is attributed to its primary class (the most frequent first label among its clips; ties -> lowest id).
  Per class, its groups are ordered by crc32(f"{seed}:{group}") (then by name) and the first k are held out, with k
  the count whose cumulated clip number is closest to `holdout_fraction` x the class's clips, constrained to
  1 <= k <= n_groups - 1 when the class has >= 2 groups (so every such class is present in both splits) and k = 0 for
  a single-group class. `holdout_fraction == 0` holds out nothing.

  Args:
    groups: group name of each clip, (clips,).
    first_labels: class id of each clip's first label, (clips,).
    holdout_fraction: target share of held-out clips per class, in [0, 1).
    seed: hash salt.

  Returns:
    The set of held-out group names.

  Source: this project (a deterministic stand-in for sklearn's StratifiedGroupKFold with a stable hash order).
  """
  if len(groups) != len(first_labels):
    raise ValueError(f"groups ({len(groups)}) and first_labels ({len(first_labels)}) differ in length")
  if holdout_fraction <= 0:
    return set()
  clip_count: collections.Counter[str] = collections.Counter(groups)
  class_votes: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
  for group, label in zip(groups, first_labels):
    class_votes[group][int(label)] += 1
  by_class: dict[int, list[str]] = collections.defaultdict(list)
  for group, votes in class_votes.items():
    primary = min(votes, key=lambda c: (-votes[c], c))
    by_class[primary].append(group)
  held_out: set[str] = set()
  for _, class_groups in sorted(by_class.items()):
    if len(class_groups) < 2:
      continue
    ordered = sorted(class_groups, key=lambda g: (_group_hash(g, seed), g))
    target = holdout_fraction * sum(clip_count[g] for g in ordered)
    cumulative = np.cumsum([clip_count[g] for g in ordered])
    candidates = range(1, len(ordered))  # k groups held out, at least one left for training
    k = min(candidates, key=lambda k: (abs(cumulative[k - 1] - target), k))
    held_out.update(ordered[:k])
  return held_out


def _pick_column(columns: Sequence[str], explicit: str | None, default: str | None, what: str, csv_path: str):
  """An explicitly named column must exist; a default one is used only when present."""
  if explicit is not None:
    if explicit not in columns:
      raise ValueError(f"metadata CSV {csv_path} has no {what} column {explicit!r} (columns: {list(columns)})")
    return explicit
  return default if default in columns else None


def _split_labels(value: str, separator: str) -> list[str]:
  return [name.strip() for name in value.split(separator) if name.strip()]


def plan_labeled_audio(config: LabeledAudioConfig) -> LabeledAudioPlan:
  """Reads and validates the CSV, resolves the class list and assigns each labeled row a split.

  Args:
    config: the build options.

  Returns:
    LabeledAudioPlan.

  Raises:
    FileNotFoundError: `audio_dir` is not a folder, or `csv_path` does not exist.
    ValueError: a required column (filename, class_label / labels) or an explicitly named column is missing; labels
      not in the given `class_names`; an inconsistent `class_index` column; a split column mixing train/test values
      with others; `holdout_folds` without a fold column; no labeled row.
  """
  if not os.path.isdir(config.audio_dir):
    raise FileNotFoundError(f"audio_dir is not an existing folder: {config.audio_dir}")
  columns, rows, csv_sha = read_csv(config.csv_path)
  where = config.csv_path
  if config.filename_column not in columns:
    raise ValueError(
        f"metadata CSV {where} lacks the required column {config.filename_column!r} (columns: {columns})"
    )
  if config.label_column is not None:
    label_col = _pick_column(columns, config.label_column, None, "label", where)
  elif "labels" in columns:
    label_col = "labels"
  elif "class_label" in columns:
    label_col = "class_label"
  else:
    raise ValueError(
        f"metadata CSV {where} lacks a label column: needs 'class_label' or 'labels' (columns: {columns})"
    )
  group_col = _pick_column(columns, config.group_column, "source_group", "group", where)
  split_col = _pick_column(columns, config.split_column, "split", "split", where)
  fold_col = _pick_column(columns, config.fold_column, "fold", "fold", where)
  caption_col = _pick_column(columns, config.caption_column, "caption", "caption", where)

  is_list = label_col != "class_label"
  separator = config.label_separator
  if separator is None:
    separator = ";" if any(";" in r[label_col] for r in rows) else ","
  row_labels = [_split_labels(r[label_col], separator) if is_list else ([r[label_col]] if r[label_col] else [])
                for r in rows]

  # Class list.
  if config.class_names is not None:
    class_names = config.class_names
  elif "class_index" in columns and not is_list:
    index_of: dict[str, int] = {}
    for r in rows:
      if not r[label_col]:
        continue
      try:
        idx = int(r["class_index"])
      except ValueError as e:
        raise ValueError(f"metadata CSV {where}: non-integer class_index {r['class_index']!r}") from e
      if index_of.setdefault(r[label_col], idx) != idx:
        raise ValueError(f"metadata CSV {where}: class {r[label_col]!r} has two class_index values "
                         f"({index_of[r[label_col]]} and {idx})")
    by_index = {i: n for n, i in index_of.items()}
    if len(by_index) != len(index_of) or sorted(by_index) != list(range(len(by_index))):
      raise ValueError(f"metadata CSV {where}: class_index must map the classes one-to-one onto 0..K-1, "
                       f"got {sorted(index_of.items(), key=lambda kv: kv[1])}")
    class_names = tuple(by_index[i] for i in range(len(by_index)))
  else:
    class_names = tuple(sorted({name for labels in row_labels for name in labels}))
  if len(set(class_names)) != len(class_names):
    raise ValueError(f"class_names has duplicates: {class_names}")
  class_id = {name: i for i, name in enumerate(class_names)}
  unknown = sorted({name for labels in row_labels for name in labels if name not in class_id})
  if unknown:
    raise ValueError(f"metadata CSV {where}: labels not in class_names: {unknown[:20]}"
                     f"{' ...' if len(unknown) > 20 else ''}")

  records, unlabeled = [], []
  for i, (row, labels) in enumerate(zip(rows, row_labels)):
    filename = row[config.filename_column]
    if not labels:
      unlabeled.append(filename)
      continue
    group = (row[group_col] if group_col else "") or filename
    records.append(ClipRecord(
        key=f"{i:08d}", filename=filename, path=os.path.join(config.audio_dir, filename),
        label_ids=tuple(class_id[n] for n in labels), caption=row[caption_col] if caption_col else "",
        group=group, split=row[split_col].lower() if split_col else "",
    ))
  if not records:
    raise ValueError(f"metadata CSV {where} has no labeled row")

  # Splits.
  if config.holdout_folds is not None:
    if fold_col is None:
      raise ValueError(f"holdout_folds given but metadata CSV {where} has no fold column (columns: {columns})")
    folds = {str(r[fold_col]).strip() for r in rows}
    missing = sorted(set(config.holdout_folds) - folds)
    if missing:
      raise ValueError(f"holdout_folds {missing} do not occur in column {fold_col!r} of {where}")
    fold_of = {f"{i:08d}": str(r[fold_col]).strip() for i, r in enumerate(rows)}
    records = [r._replace(split="test" if fold_of[r.key] in config.holdout_folds else "train") for r in records]
    split_source = "folds"
  else:
    values = {r.split for r in records}
    known = {v for v in values if v in _SPLIT_ALIASES}
    if split_col and known and known == values:
      records = [r._replace(split=_SPLIT_ALIASES[r.split]) for r in records]
      split_source = "csv"
    elif known:
      raise ValueError(
          f"metadata CSV {where}: column {split_col!r} mixes split values {sorted(known)} with unrecognised "
          f"{sorted(values - known)}; use only {sorted(set(_SPLIT_ALIASES))} or none of them")
    else:
      held_out = stratified_group_holdout(
          [r.group for r in records], [r.label_ids[0] for r in records], config.holdout_fraction,
          config.split_seed)
      records = [r._replace(split="test" if r.group in held_out else "train") for r in records]
      split_source = "holdout"
  return LabeledAudioPlan(class_names=tuple(class_names), records=tuple(records), split_source=split_source,
                          unlabeled=tuple(unlabeled), csv_sha256=csv_sha)


def _fingerprint(config: LabeledAudioConfig, plan: LabeledAudioPlan) -> str:
  """sha256 of the options and the CSV bytes; the folder paths are left out so a moved corpus still matches."""
  options = config.fingerprint_fields()
  del options["audio_dir"], options["csv_path"]
  payload = json.dumps({"options": options, "csv_sha256": plan.csv_sha256,
                        "version": _VERSION}, sort_keys=True)
  return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class LabeledAudioBuilder(AudioClipsBuilder, skip_registration=True):
  """Builds a folder of audio files + a CSV into array_record files (one dataset per `name` / config name).

  Not registered with TFDS: `build_labeled_audio` makes a subclass carrying the dataset `name`. Read the result
  with `builder.as_data_source(split)`, or without this module with
  `tfds.data_source(f"{name}/{config_name}", data_dir=data_dir)` or `tfds.builder_from_directory(dataset_dir)`.

  Args (keyword-only):
    config: LabeledAudioConfig.
    data_dir: root folder of the TFDS datasets; files go to `data_dir/name/config_name/1.0.0/`.
    config_name: tfds config name (default "sr{sample_rate}_{dtype}").
    plan: a precomputed `plan_labeled_audio(config)` (default: computed here).

  Raises:
    see `plan_labeled_audio`.
  """

  name = "labeled_audio"
  VERSION = tfds.core.Version(_VERSION)
  RELEASE_NOTES = {_VERSION: "Folder of audio + CSV -> array_record, TF-free features."}

  def __init__(self, *, config: LabeledAudioConfig, data_dir: str | os.PathLike, config_name: str | None = None,
               plan: LabeledAudioPlan | None = None):
    self.plan = plan if plan is not None else plan_labeled_audio(config)
    super().__init__(
        options=config, data_dir=data_dir, config_name=config_name or f"sr{config.sample_rate}_{config.dtype}",
        description=f"{config.sample_rate} Hz {config.dtype} waveforms from {config.csv_path}",
        fingerprint=_fingerprint(config, self.plan))
    self._planned = collections.Counter(r.split for r in self.plan.records)
    self._plan_skips = [{"filename": f, "split": "", "reason": "no label in CSV"} for f in self.plan.unlabeled]

  def _info(self) -> tfds.core.DatasetInfo:
    num_classes = len(self.plan.class_names)
    features = tfds.features.FeaturesDict({
        "waveform": self.waveform_feature(),
        "label": tfds.features.ClassLabel(names=list(self.plan.class_names)),
        "labels": tfds.features.Tensor(shape=(num_classes,), dtype=np.uint8),
        "caption": tfds.features.Text(),
        "filename": tfds.features.Text(),
        "group": tfds.features.Text(),
    })
    return tfds.core.DatasetInfo(
        builder=self,
        description=(f"Labeled audio from {self.options.csv_path}: waveform (samples,) {self.options.dtype} at "
                     f"{self.options.sample_rate} Hz, {num_classes} classes, splits by {self.plan.split_source}."),
        features=features,
        disable_shuffling=True,  # examples keep CSV order; shuffle in grain
        metadata=tfds.core.MetadataDict(sample_rate=self.options.sample_rate, dtype=self.options.dtype,
                                        class_names=list(self.plan.class_names)),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(records) for split, records in self.plan.split_records().items()}

  def _generate_examples(self, records: Sequence[ClipRecord]) -> Iterator[tuple[str, dict[str, Any]]]:
    num_classes = len(self.plan.class_names)
    for record, waveform in self.decoded(records):
      multi_hot = np.zeros((num_classes,), np.uint8)
      multi_hot[list(record.label_ids)] = 1
      yield record.key, {
          "waveform": waveform,
          "label": record.label_ids[0],
          "labels": multi_hot,
          "caption": record.caption,
          "filename": record.filename,
          "group": record.group,
      }

  @property
  def class_names(self) -> tuple[str, ...]:
    """Class names; class id = position."""
    return self.plan.class_names

  @property
  def source_description(self) -> str:
    return f"{self.options.csv_path} (audio_dir {self.options.audio_dir})"

  def report_extras(self) -> dict[str, Any]:
    plan = self.plan
    return {
        "csv_sha256": plan.csv_sha256,
        "class_names": list(plan.class_names),
        "split_source": plan.split_source,
        "num_rows": len(plan.records) + len(plan.unlabeled),
        "num_groups": {s: len({r.group for r in recs}) for s, recs in plan.split_records().items()},
    }


@functools.lru_cache(maxsize=None)
def _builder_class(name: str) -> type[LabeledAudioBuilder]:
  """An unregistered LabeledAudioBuilder subclass whose tfds dataset name is `name`."""
  class_name = "".join(part.capitalize() for part in name.split("_")) + "LabeledAudio"
  return types.new_class(class_name, (LabeledAudioBuilder,), {"skip_registration": True},
                         lambda ns: ns.update({"name": name, "__module__": __name__}))


def build_labeled_audio(
    audio_dir: str | os.PathLike,
    csv_path: str | os.PathLike,
    data_dir: str | os.PathLike,
    sample_rate: int,
    name: str = "labeled_audio",
    *,
    config_name: str | None = None,
    overwrite: bool = False,
    **options: Any,
) -> LabeledAudioBuilder:
  """Builds (or reuses) the array_record dataset of a folder of audio + CSV; returns its builder.

  Files go to `data_dir/name/config_name/1.0.0/` (config_name defaults to "sr{sample_rate}_{dtype}"), with
  `build_report.json` beside them: counts per split, skipped filenames with reasons, options, fingerprint.
  When that folder already holds a finished build with the same fingerprint (options + CSV bytes; neither the folder
  paths nor the audio files are hashed), nothing is decoded or written.

  Args:
    audio_dir: folder of audio files (any libsndfile format: WAV, FLAC, OGG, ...).
    csv_path: metadata CSV (see module docstring for columns).
    data_dir: root folder of TFDS datasets.
    sample_rate: stored rate in Hz.
    name: tfds dataset name (lower snake_case).
    config_name: tfds config name.
    overwrite: rebuild when the existing dataset was made with other options / another CSV (default: raise).
    **options: further LabeledAudioConfig fields (dtype, class_names, holdout_fraction, group_column, split_column,
      fold_column, holdout_folds, filename_column, label_column, label_separator, caption_column, max_duration_s,
      split_seed, num_workers).

  Returns:
    LabeledAudioBuilder: `.as_data_source(split)` -> random-access source of dicts (waveform (samples,) int16 or
    float32, label int64, labels (num_classes,) uint8, caption / filename / group bytes); `.class_names`;
    `.sample_rate`; `.info.splits[split].num_examples`; `.build_report`.

  Raises:
    FileNotFoundError: missing audio_dir or CSV.
    ValueError: bad name / options / CSV (see `plan_labeled_audio`); existing dataset with another fingerprint and
      `overwrite=False`; every clip of some split unreadable (nothing is written then).
  """
  if not _NAME_RE.match(name):
    raise ValueError(f"name must be lower snake_case ({_NAME_RE.pattern}), got {name!r}")
  data_dir = io.native(data_dir)  # absolute local path, or a URL (gs://) kept as is
  config = LabeledAudioConfig(audio_dir=os.path.abspath(os.fspath(audio_dir)),
                              csv_path=os.path.abspath(os.fspath(csv_path)), sample_rate=sample_rate, **options)
  plan = plan_labeled_audio(config)
  cls = _builder_class(name)
  make = functools.partial(cls, config=config, data_dir=data_dir, config_name=config_name, plan=plan)
  return prepare_and_report(make(), make, overwrite=overwrite)


