"""Clotho v2.1 (Drossos, Lipping, Virtanen, "Clotho: an Audio Captioning Dataset", ICASSP 2020) as array_record,
TF-free.

Source layout (Zenodo record 4783391, Clotho v2.1):

  clotho_captions_{development,validation,evaluation}.csv   file_name, caption_1, ..., caption_5
  clotho_audio_{development,validation,evaluation}.7z       -> {development,validation,evaluation}/<file_name>

`manual_dir` may hold the CSVs and the three audio folders directly, or one or two folder levels down (e.g. the
aac-datasets layout `clotho_csv_files/` + `clotho_audio_files/<split>/`). Without `manual_dir` the six files of
CLOTHO_URLS are fetched with tfds' download manager; tfds cannot extract 7z, so the audio archives are extracted
with py7zr when installed, else a `7z` / `7zz` / `7za` executable (`extract_7z`, which says what to install).

Splits: train = development, validation = validation, test = evaluation (CSV order).

Captions layout: ONE EXAMPLE PER CLIP with its 5 captions, so the audio is stored once and text-to-audio retrieval
evaluation has all 5 reference captions of every clip:

  waveform  Tensor (samples,) int16 PCM or float32 in [-1, 1] at `sample_rate` Hz (soxr HQ), raw bytes
  captions  Tensor (5,) of UTF-8 bytes: caption_1 .. caption_5 (read back as a numpy object array of bytes)
  caption   Text, caption_1 (the labeled_audio `caption` field)
  filename  Text, `file_name` of the CSV

Unreadable clips are skipped and counted in `build_report.json`.
"""

from __future__ import annotations

import collections
import csv
import functools
import os
import shutil
import subprocess
from typing import Any, Iterator, NamedTuple, Sequence

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from data_pipelines.builders import base
from data_pipelines.builders.base import AudioClipsBuilder, WaveformOptions

__all__ = ["CLOTHO_SPLITS", "CLOTHO_URLS", "NUM_CAPTIONS", "ClothoRecord", "ClothoBuilder", "build_clotho",
           "read_clotho_captions", "extract_7z"]

# tfds split -> Clotho split (file and folder names)
CLOTHO_SPLITS = {"train": "development", "validation": "validation", "test": "evaluation"}
# Clotho v2.1 files on https://zenodo.org/records/4783391 (the dataset's Zenodo page).
_ZENODO = "https://zenodo.org/records/4783391/files"
CLOTHO_URLS = {
    **{f"{folder}_captions": f"{_ZENODO}/clotho_captions_{folder}.csv?download=1" for folder in CLOTHO_SPLITS.values()},
    **{f"{folder}_audio": f"{_ZENODO}/clotho_audio_{folder}.7z?download=1" for folder in CLOTHO_SPLITS.values()},
}
NUM_CAPTIONS = 5
_CAPTION_COLUMNS = tuple(f"caption_{k}" for k in range(1, NUM_CAPTIONS + 1))
_VERSION = "1.0.0"


class ClothoRecord(NamedTuple):
  """One clip with its 5 captions (no audio read yet)."""

  key: str  # CSV row index, zero-padded
  split: str
  path: str
  filename: str
  captions: tuple[str, ...]


def read_clotho_captions(path: str | os.PathLike) -> list[tuple[str, tuple[str, ...]]]:
  """Reads a clotho_captions_<split>.csv: [(file_name, (caption_1, ..., caption_5)), ...] in file order.

  UTF-8 (with or without BOM); files that are not valid UTF-8 are read as ISO-8859-1 with a warning. Values are
  stripped of surrounding white space.

  Raises:
    FileNotFoundError: no file.
    ValueError: missing file_name / caption_k columns, or no rows.
  """
  path = os.fspath(path)
  with open(path, "rb") as f:
    raw = f.read()
  try:
    text = raw.decode("utf-8-sig")
  except UnicodeDecodeError:
    logging.warning("%s is not UTF-8; reading it as ISO-8859-1", path)
    text = raw.decode("iso-8859-1")
  reader = csv.DictReader(text.splitlines())
  columns = [c.strip() for c in reader.fieldnames or []]
  reader.fieldnames = columns
  missing = [c for c in ("file_name",) + _CAPTION_COLUMNS if c not in columns]
  if missing:
    raise ValueError(f"{path} lacks the columns {missing} (columns: {columns})")
  out = [(row["file_name"].strip(), tuple((row[c] or "").strip() for c in _CAPTION_COLUMNS)) for row in reader]
  if not out:
    raise ValueError(f"{path} has no rows")
  return out


def extract_7z(archive: str | os.PathLike, dest: str | os.PathLike) -> str:
  """Extracts a 7z archive into `dest` (once: a finished extraction leaves `dest/.extracted`).

  Uses py7zr when importable, else the first of 7z / 7zz / 7za / 7zr found on PATH.

  Returns:
    `dest`.

  Raises:
    RuntimeError: neither py7zr nor a 7z executable is available (the message says how to proceed), or the
      executable failed.
  """
  archive, dest = os.fspath(archive), os.fspath(dest)
  if os.path.exists(os.path.join(dest, ".extracted")):
    return dest
  try:
    import py7zr  # pylint: disable=import-outside-toplevel
  except ImportError:
    py7zr = None
  executable = None
  if py7zr is None:
    executable = next((p for p in map(shutil.which, ("7z", "7zz", "7za", "7zr")) if p), None)
    if executable is None:
      raise RuntimeError(
          f"cannot extract {archive}: Clotho's audio archives are 7z, which tfds does not extract; install py7zr "
          "(pip install py7zr) or p7zip (a '7z' executable on PATH), or extract the archives yourself and pass "
          "manual_dir")
  partial = dest + ".partial"
  shutil.rmtree(partial, ignore_errors=True)
  os.makedirs(partial)
  if py7zr is not None:
    with py7zr.SevenZipFile(archive, mode="r") as z:
      z.extractall(path=partial)
  else:
    done = subprocess.run([executable, "x", "-y", f"-o{partial}", archive], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
      raise RuntimeError(f"{executable} failed to extract {archive}: {done.stderr[-2000:]}")
  open(os.path.join(partial, ".extracted"), "w").close()
  shutil.rmtree(dest, ignore_errors=True)
  os.replace(partial, dest)
  return dest


def _locate_manual(manual_dir: str, folder: str) -> tuple[str | None, str | None]:
  """(captions CSV, audio folder) of one Clotho split under manual_dir (None where absent)."""
  csv_path = base.find_under(manual_dir, f"clotho_captions_{folder}.csv")
  audio = base.find_under(manual_dir, folder)
  return csv_path, audio if audio is not None and os.path.isdir(audio) else None


class ClothoBuilder(AudioClipsBuilder, skip_registration=True):
  """Clotho v2.1 -> array_record, one example per clip with its 5 captions (see the module docstring).

  Args (keyword-only):
    options: WaveformOptions.
    data_dir: root folder of the TFDS datasets; files go to `data_dir/clotho/config_name/1.0.0/`.
    manual_dir: local Clotho copy; None: download CLOTHO_URLS.
    splits: subset of ("train", "validation", "test"); None: all three (manual: every split whose captions CSV
      is present).
    config_name: tfds config name (default "sr{sample_rate}_{dtype}").

  Raises:
    ValueError: unknown split names.
    FileNotFoundError: a manual copy lacking a requested split's CSV, a present CSV without its audio folder, or
      no captions CSV at all.
  """

  name = "clotho"
  VERSION = tfds.core.Version(_VERSION)
  RELEASE_NOTES = {_VERSION: "Clotho v2.1, 5 captions per clip in one example, TF-free features."}

  def __init__(self, *, options: WaveformOptions, data_dir: str | os.PathLike,
               manual_dir: str | os.PathLike | None = None, splits: Sequence[str] | None = None,
               config_name: str | None = None):
    if splits is not None:
      splits = [splits] if isinstance(splits, str) else list(splits)
      unknown = sorted(set(splits) - set(CLOTHO_SPLITS))
      if unknown or not splits:
        raise ValueError(f"unknown Clotho splits {unknown or splits}; choose from {list(CLOTHO_SPLITS)}")
    wanted = [s for s in CLOTHO_SPLITS if splits is None or s in splits]
    self.manual_dir = None if manual_dir is None else os.path.abspath(os.fspath(manual_dir))
    self.sources: dict[str, tuple[str, str]] = {}  # split -> (captions CSV, audio folder)
    self.records: list[ClothoRecord] = []
    if self.manual_dir is None:
      self.splits = tuple(wanted)
      sources = {"urls": {s: [CLOTHO_URLS[f"{CLOTHO_SPLITS[s]}_{k}"] for k in ("captions", "audio")]
                          for s in self.splits}}
    else:
      if not os.path.isdir(self.manual_dir):
        raise FileNotFoundError(f"Clotho manual_dir is not a folder: {self.manual_dir}")
      for split in wanted:
        folder = CLOTHO_SPLITS[split]
        csv_path, audio = _locate_manual(self.manual_dir, folder)
        if csv_path is None:
          if splits is not None:
            raise FileNotFoundError(f"no clotho_captions_{folder}.csv under {self.manual_dir}")
          continue
        if audio is None:
          raise FileNotFoundError(f"{csv_path} found but no audio folder '{folder}' under {self.manual_dir}")
        self.sources[split] = (csv_path, audio)
      if not self.sources:
        raise FileNotFoundError(f"no clotho_captions_<split>.csv under {self.manual_dir}")
      self.splits = tuple(self.sources)
      sources = {"captions": {s: base.file_sha256(c) for s, (c, _) in self.sources.items()}}
    super().__init__(
        options=options, data_dir=data_dir, config_name=config_name or f"sr{options.sample_rate}_{options.dtype}",
        description=f"Clotho v2.1 at {options.sample_rate} Hz {options.dtype}",
        fingerprint=base.fingerprint_of(options.fingerprint_fields(), sources, _VERSION))

  def _info(self) -> tfds.core.DatasetInfo:
    features = tfds.features.FeaturesDict({
        "waveform": self.waveform_feature(),
        "captions": tfds.features.Tensor(shape=(NUM_CAPTIONS,), dtype=np.object_),
        "caption": tfds.features.Text(),
        "filename": tfds.features.Text(),
    })
    return tfds.core.DatasetInfo(
        builder=self,
        description=(f"Clotho v2.1: waveform (samples,) {self.options.dtype} at {self.options.sample_rate} Hz with "
                     "its 5 captions; splits train (development), validation, test (evaluation)."),
        features=features,
        homepage="https://zenodo.org/records/4783391",
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(sample_rate=self.options.sample_rate, dtype=self.options.dtype,
                                        split_folders={s: CLOTHO_SPLITS[s] for s in self.splits},
                                        captions_layout="one example per clip, 5 captions"),
    )

  def _download(self, dl_manager) -> None:
    urls = {f"{CLOTHO_SPLITS[s]}_{k}": CLOTHO_URLS[f"{CLOTHO_SPLITS[s]}_{k}"]
            for s in self.splits for k in ("captions", "audio")}
    paths = {k: os.fspath(v) for k, v in dl_manager.download(urls).items()}
    for split in self.splits:
      folder = CLOTHO_SPLITS[split]
      archive = paths[f"{folder}_audio"]
      extracted = extract_7z(archive, archive + ".extracted")
      audio = base.find_under(extracted, folder)
      self.sources[split] = (paths[f"{folder}_captions"],
                             audio if audio is not None and os.path.isdir(audio) else extracted)

  def _split_generators(self, dl_manager):
    if self.manual_dir is None:
      self._download(dl_manager)
    by_split = {}
    for split, (csv_path, audio) in self.sources.items():
      by_split[split] = [
          ClothoRecord(key=f"{i:08d}", split=split, path=os.path.join(audio, name), filename=name, captions=caps)
          for i, (name, caps) in enumerate(read_clotho_captions(csv_path))]
    self.records = [r for recs in by_split.values() for r in recs]
    self._planned = collections.Counter({s: len(r) for s, r in by_split.items()})
    return {split: self._generate_examples(records) for split, records in by_split.items()}

  def _generate_examples(self, records: Sequence[ClothoRecord]) -> Iterator[tuple[str, dict[str, Any]]]:
    for record, waveform in self.decoded(records):
      yield record.key, {
          "waveform": waveform,
          "captions": np.array(record.captions, dtype=object),
          "caption": record.captions[0],
          "filename": record.filename,
      }

  @property
  def source_description(self) -> str:
    return f"Clotho at {self.manual_dir or _ZENODO}"

  def report_extras(self) -> dict[str, Any]:
    return {"sources": {s: {"captions_csv": c, "audio_dir": a} for s, (c, a) in self.sources.items()},
            "num_clips": dict(self._planned)}


def build_clotho(
    manual_dir: str | os.PathLike | None,
    data_dir: str | os.PathLike,
    sample_rate: int,
    *,
    splits: Sequence[str] | None = None,
    dtype: str = "int16",
    max_duration_s: float | None = None,
    num_workers: int = 4,
    config_name: str | None = None,
    overwrite: bool = False,
    download_dir: str | os.PathLike | None = None,
) -> ClothoBuilder:
  """Builds (or reuses) Clotho v2.1 as array_record; returns its builder.

  Files go to `data_dir/clotho/config_name/1.0.0/` with `build_report.json`. A finished build with the same
  fingerprint (options + caption CSV digests, or + the URLs when downloaded) is reused.

  Args:
    manual_dir: local Clotho copy (see the module docstring); None: download CLOTHO_URLS with tfds' download
      manager (into `download_dir`, default `data_dir/downloads`) and extract the 7z archives.
    data_dir: root folder of TFDS datasets.
    sample_rate: stored rate in Hz (Clotho is 44100 Hz; other rates are resampled with soxr HQ).
    splits: subset of ("train", "validation", "test"); None: all present (manual) / all three (download).
    dtype: "int16" or "float32" waveform storage.
    max_duration_s: keep the first seconds of each clip (None: whole clip, 15 to 30 s).
    num_workers: decoding threads.
    config_name: tfds config name (default "sr{sample_rate}_{dtype}").
    overwrite: rebuild when the existing build has another fingerprint (default: raise).
    download_dir: tfds download folder.

  Returns:
    ClothoBuilder: `.as_data_source("test")` -> random-access source of dicts (module docstring).

  Raises:
    FileNotFoundError: incomplete manual copy.
    ValueError: bad options, unknown splits, another build in the folder and `overwrite=False`, a split whose
      clips are all unreadable.
    RuntimeError: downloading without py7zr or a 7z executable to extract the audio.
  """
  options = WaveformOptions(sample_rate=sample_rate, dtype=dtype, max_duration_s=max_duration_s,
                            num_workers=num_workers)
  make = functools.partial(ClothoBuilder, options=options, data_dir=os.path.abspath(os.fspath(data_dir)),
                           manual_dir=manual_dir, splits=splits, config_name=config_name)
  return base.prepare_and_report(make(), make, overwrite=overwrite, download_dir=download_dir)
