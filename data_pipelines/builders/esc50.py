"""ESC-50 (Piczak, "ESC: Dataset for Environmental Sound Classification", ACM MM 2015) as array_record, TF-free.

Source layout (the GitHub repository karolpiczak/ESC-50, also its `master.zip`):

  ESC-50-master/meta/esc50.csv   filename, fold (1..5), target (0..49), category, esc10 (True/False), src_file, take
  ESC-50-master/audio/*.wav      2000 clips of 5 s, 44.1 kHz mono

Splits: one per fold, `fold1` ... `fold5` (CSV order within a fold), for the usual 5-fold cross-validation: train on
`"fold1+fold2+fold3+fold4"`, test on `"fold5"` (`cross_validation_splits(5)`); tfds data sources accept such
"+"-joined split names.

Stored features (one example per readable clip):

  waveform  Tensor (samples,) int16 PCM or float32 in [-1, 1], at `sample_rate` Hz (soxr HQ at build time), raw bytes
  label     ClassLabel: `target` (names: ESC50_CATEGORIES, the `category` values in target order)
  labels    Tensor (50,) uint8 one-hot of `target` (the multi-hot layout shared with the other builders)
  fold      int32, 1..5
  esc10     bool, member of the ESC-10 subset
  src_file  Text, the freesound clip the 5-s excerpt was cut from (folds keep a src_file together)
  take      Text, the excerpt letter (A, B, ...)
  filename  Text, as in the CSV

Download: without `manual_dir`, tfds' download manager fetches and extracts ESC50_URL; with `manual_dir` (the
ESC-50-master folder, or a folder holding it) nothing is downloaded. Unreadable clips are skipped and counted in
`build_report.json` (see `base.prepare_and_report`).
"""

from __future__ import annotations

import collections
import functools
import os
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines.builders import base
from uss_jax import io
from data_pipelines.builders.base import AudioClipsBuilder, WaveformOptions

__all__ = ["ESC50_URL", "ESC50_CATEGORIES", "Esc50Record", "Esc50Builder", "build_esc50", "plan_esc50",
           "find_esc50_root", "cross_validation_splits"]

# The repository archive linked as "Download" in the README of https://github.com/karolpiczak/ESC-50
# (the account was formerly named karoldvl; both URLs resolve to the same archive).
ESC50_URL = "https://github.com/karolpiczak/ESC-50/archive/master.zip"

# `category` of each `target` 0..49 in meta/esc50.csv (the README's 5 x 10 table read column by column).
ESC50_CATEGORIES = (
    "dog", "rooster", "pig", "cow", "frog", "cat", "hen", "insects", "sheep", "crow",
    "rain", "sea_waves", "crackling_fire", "crickets", "chirping_birds", "water_drops", "wind", "pouring_water",
    "toilet_flush", "thunderstorm",
    "crying_baby", "sneezing", "clapping", "breathing", "coughing", "footsteps", "laughing", "brushing_teeth",
    "snoring", "drinking_sipping",
    "door_wood_knock", "mouse_click", "keyboard_typing", "door_wood_creaks", "can_opening", "washing_machine",
    "vacuum_cleaner", "clock_alarm", "clock_tick", "glass_breaking",
    "helicopter", "chainsaw", "siren", "car_horn", "engine", "train", "church_bells", "airplane", "fireworks",
    "hand_saw",
)
NUM_FOLDS = 5
_CSV = os.path.join("meta", "esc50.csv")
_COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
_VERSION = "1.0.0"


class Esc50Record(NamedTuple):
  """One row of meta/esc50.csv (no audio read yet)."""

  key: str  # CSV row index, zero-padded
  split: str  # "fold1" ... "fold5"
  path: str  # audio/filename
  filename: str
  fold: int
  target: int
  esc10: bool
  src_file: str
  take: str


def cross_validation_splits(test_fold: int) -> tuple[str, str]:
  """(train split, test split) names of one cross-validation round, e.g. 5 -> ("fold1+fold2+fold3+fold4", "fold5").

  Raises:
    ValueError: test_fold outside 1..5.
  """
  if not 1 <= int(test_fold) <= NUM_FOLDS:
    raise ValueError(f"test_fold must be in 1..{NUM_FOLDS}, got {test_fold}")
  train = "+".join(f"fold{k}" for k in range(1, NUM_FOLDS + 1) if k != int(test_fold))
  return train, f"fold{int(test_fold)}"


def find_esc50_root(folder: str | os.PathLike) -> str:
  """The folder holding `meta/esc50.csv` and `audio/`: `folder` itself or a folder up to two levels below it.

  Raises:
    FileNotFoundError: no meta/esc50.csv there.
  """
  found = base.find_under(folder, _CSV)
  if found is None:
    raise FileNotFoundError(f"no {_CSV} in {os.fspath(folder)} or the folders below it (expected the ESC-50-master "
                            "folder of https://github.com/karolpiczak/ESC-50, or a folder holding it)")
  return os.path.dirname(os.path.dirname(found))


def _parse_bool(value: str, where: str) -> bool:
  lowered = value.strip().lower()
  if lowered not in ("true", "false"):
    raise ValueError(f"{where}: esc10 must be True or False, got {value!r}")
  return lowered == "true"


def plan_esc50(root: str | os.PathLike) -> list[Esc50Record]:
  """Reads and checks `root/meta/esc50.csv`.

  Args:
    root: the ESC-50 folder (see `find_esc50_root`).

  Returns:
    Esc50Records in CSV order.

  Raises:
    FileNotFoundError: no CSV.
    ValueError: missing columns, a fold outside 1..5, a target outside 0..49, a category that is not
      ESC50_CATEGORIES[target], a bad esc10 value, or no rows.
  """
  root = os.fspath(root)
  csv_path = os.path.join(root, _CSV)
  columns, rows, _ = base.read_csv(csv_path)
  missing = [c for c in _COLUMNS if c not in columns]
  if missing:
    raise ValueError(f"{csv_path} lacks the columns {missing} (columns: {columns})")
  records = []
  for i, row in enumerate(rows):
    where = f"{csv_path} row {i + 2}"
    try:
      fold, target = int(row["fold"]), int(row["target"])
    except ValueError as e:
      raise ValueError(f"{where}: fold and target must be integers ({row['fold']!r}, {row['target']!r})") from e
    if not 1 <= fold <= NUM_FOLDS:
      raise ValueError(f"{where}: fold {fold} outside 1..{NUM_FOLDS}")
    if not 0 <= target < len(ESC50_CATEGORIES):
      raise ValueError(f"{where}: target {target} outside 0..{len(ESC50_CATEGORIES) - 1}")
    if row["category"] != ESC50_CATEGORIES[target]:
      raise ValueError(f"{where}: category {row['category']!r} of target {target} is not the ESC-50 name "
                       f"{ESC50_CATEGORIES[target]!r}")
    records.append(Esc50Record(
        key=f"{i:08d}", split=f"fold{fold}", path=os.path.join(root, "audio", row["filename"]),
        filename=row["filename"], fold=fold, target=target, esc10=_parse_bool(row["esc10"], where),
        src_file=row["src_file"], take=row["take"]))
  if not records:
    raise ValueError(f"{csv_path} has no rows")
  return records


class Esc50Builder(AudioClipsBuilder, skip_registration=True):
  """ESC-50 -> array_record, splits fold1..fold5 (see the module docstring for the features).

  Args (keyword-only):
    options: WaveformOptions (sample rate, dtype, max duration, decoding threads).
    data_dir: root folder of the TFDS datasets; files go to `data_dir/esc50/config_name/1.0.0/`.
    manual_dir: the local ESC-50 copy (ESC-50-master or a folder holding it); None: download ESC50_URL.
    config_name: tfds config name (default "sr{sample_rate}_{dtype}").

  Raises:
    FileNotFoundError: `manual_dir` holds no meta/esc50.csv.
  """

  name = "esc50"
  VERSION = tfds.core.Version(_VERSION)
  RELEASE_NOTES = {_VERSION: "ESC-50 clips, one split per fold, TF-free features."}

  def __init__(self, *, options: WaveformOptions, data_dir: str | os.PathLike,
               manual_dir: str | os.PathLike | None = None, config_name: str | None = None):
    self.root = None if manual_dir is None else find_esc50_root(os.path.abspath(os.fspath(manual_dir)))
    self.records: list[Esc50Record] | None = None
    if self.root is None:
      sources = {"url": ESC50_URL}
    else:
      sources = {"esc50.csv": base.file_sha256(os.path.join(self.root, _CSV))}
    super().__init__(
        options=options, data_dir=data_dir, config_name=config_name or f"sr{options.sample_rate}_{options.dtype}",
        description=f"ESC-50 at {options.sample_rate} Hz {options.dtype}",
        fingerprint=base.fingerprint_of(options.fingerprint_fields(), sources, _VERSION))

  def _info(self) -> tfds.core.DatasetInfo:
    features = tfds.features.FeaturesDict({
        "waveform": self.waveform_feature(),
        "label": tfds.features.ClassLabel(names=list(ESC50_CATEGORIES)),
        "labels": tfds.features.Tensor(shape=(len(ESC50_CATEGORIES),), dtype=np.uint8),
        "fold": tfds.features.Scalar(dtype=np.int32),
        "esc10": tfds.features.Scalar(dtype=np.bool_),
        "src_file": tfds.features.Text(),
        "take": tfds.features.Text(),
        "filename": tfds.features.Text(),
    })
    return tfds.core.DatasetInfo(
        builder=self,
        description=(f"ESC-50: waveform (samples,) {self.options.dtype} at {self.options.sample_rate} Hz, 50 classes, "
                     "splits fold1..fold5."),
        features=features,
        homepage="https://github.com/karolpiczak/ESC-50",
        disable_shuffling=True,  # CSV order within a fold; shuffle in grain
        metadata=tfds.core.MetadataDict(sample_rate=self.options.sample_rate, dtype=self.options.dtype,
                                        class_names=list(ESC50_CATEGORIES)),
    )

  def _split_generators(self, dl_manager):
    root = self.root
    if root is None:
      root = find_esc50_root(os.fspath(dl_manager.download_and_extract(ESC50_URL)))
      self.root = root
    self.records = plan_esc50(root)
    by_split: dict[str, list[Esc50Record]] = collections.defaultdict(list)
    for record in self.records:
      by_split[record.split].append(record)
    self._planned = collections.Counter({s: len(r) for s, r in by_split.items()})
    return {split: self._generate_examples(by_split[split]) for split in sorted(by_split)}

  def _generate_examples(self, records: Sequence[Esc50Record]) -> Iterator[tuple[str, dict[str, Any]]]:
    for record, waveform in self.decoded(records):
      one_hot = np.zeros((len(ESC50_CATEGORIES),), np.uint8)
      one_hot[record.target] = 1
      yield record.key, {
          "waveform": waveform, "label": record.target, "labels": one_hot, "fold": record.fold,
          "esc10": record.esc10, "src_file": record.src_file, "take": record.take, "filename": record.filename,
      }

  @property
  def class_names(self) -> tuple[str, ...]:
    """The 50 category names; class id = target."""
    return ESC50_CATEGORIES

  @property
  def source_description(self) -> str:
    return f"ESC-50 at {self.root or ESC50_URL}"

  def report_extras(self) -> dict[str, Any]:
    return {"source": self.root, "esc50_csv_sha256": base.file_sha256(os.path.join(self.root, _CSV)),
            "num_rows": len(self.records or ())}


def build_esc50(
    manual_dir: str | os.PathLike | None,
    data_dir: str | os.PathLike,
    sample_rate: int,
    *,
    dtype: str = "int16",
    max_duration_s: float | None = None,
    num_workers: int = 4,
    config_name: str | None = None,
    overwrite: bool = False,
    download_dir: str | os.PathLike | None = None,
) -> Esc50Builder:
  """Builds (or reuses) ESC-50 as array_record; returns its builder.

  Files go to `data_dir/esc50/config_name/1.0.0/` with `build_report.json`. A finished build with the same
  fingerprint (options + esc50.csv digest, or + ESC50_URL when downloaded) is reused without decoding anything.

  Args:
    manual_dir: local ESC-50 copy (ESC-50-master, or a folder holding it); None: download and extract ESC50_URL
      with tfds' download manager (into `download_dir`, default `data_dir/downloads`).
    data_dir: root folder of TFDS datasets.
    sample_rate: stored rate in Hz (ESC-50 is 44100 Hz; other rates are resampled with soxr HQ).
    dtype: "int16" or "float32" waveform storage.
    max_duration_s: keep the first seconds of each clip (None: all 5 s).
    num_workers: decoding threads.
    config_name: tfds config name (default "sr{sample_rate}_{dtype}").
    overwrite: rebuild when the existing build has another fingerprint (default: raise).
    download_dir: tfds download folder.

  Returns:
    Esc50Builder: `.as_data_source("fold1")` or `.as_data_source("fold1+fold2+fold3+fold4")` -> random-access
    source of dicts (module docstring); `.class_names`; `.build_report`.

  Raises:
    FileNotFoundError: `manual_dir` without meta/esc50.csv.
    ValueError: bad options or CSV (see `plan_esc50`); another build in the folder and `overwrite=False`; a fold
      whose clips are all unreadable.
  """
  options = WaveformOptions(sample_rate=sample_rate, dtype=dtype, max_duration_s=max_duration_s,
                            num_workers=num_workers)
  make = functools.partial(Esc50Builder, options=options, data_dir=io.native(data_dir),
                           manual_dir=manual_dir, config_name=config_name)
  return base.prepare_and_report(make(), make, overwrite=overwrite, download_dir=download_dir)
