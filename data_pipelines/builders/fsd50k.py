"""FSD50K (Fonseca et al., "FSD50K: An Open Dataset of Human-Labeled Sound Events", IEEE/ACM TASLP 2022) as
array_record, TF-free.

Source layout (Zenodo record 4060432):

  FSD50K.ground_truth/dev.csv         fname, labels ("Name,Name"), mids ("/m/..,/m/.."), split (train / val)
  FSD50K.ground_truth/eval.csv        fname, labels, mids
  FSD50K.ground_truth/vocabulary.csv  index, name, mid (200 rows; no header line in the official file)
  FSD50K.dev_audio/<fname>.wav        40,966 clips;  FSD50K.eval_audio/<fname>.wav  10,231 clips

`manual_dir` holds those folders (directly or one or two levels down). Without it, tfds' download manager fetches
FSD50K_GROUND_TRUTH_URL (extracted by tfds) and the multi-part audio zips FSD50K_AUDIO_URLS (`.z01`... + `.zip`,
Info-ZIP split archives that tfds cannot extract); those are read in place through `open_split_zip` (no joined
copy on disk) and extracted next to the downloads.

Splits: train / validation (dev.csv `split` = train / val) and test (eval.csv), CSV order.

Stored features (one example per readable clip):

  waveform  Tensor (samples,) int16 PCM or float32 in [-1, 1] at `sample_rate` Hz (soxr HQ), raw bytes
  label     ClassLabel: the clip's first label (names: vocabulary `name`, class id = vocabulary `index`)
  labels    Tensor (num_classes,) uint8 multi-hot over the vocabulary (200 classes)
  filename  Text, "<fname>.wav"

Unreadable clips are skipped and counted in `build_report.json`.
"""

from __future__ import annotations

import bisect
import collections
import csv
import functools
import io
import itertools
import os
import shutil
import struct
import zipfile
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines.builders import base
from data_pipelines.builders.base import AudioClipsBuilder, WaveformOptions

__all__ = ["FSD50K_GROUND_TRUTH_URL", "FSD50K_AUDIO_URLS", "FSD50K_NUM_CLASSES", "Fsd50kRecord", "Fsd50kBuilder",
           "build_fsd50k", "read_vocabulary", "plan_fsd50k", "open_split_zip"]

# Files of https://zenodo.org/records/4060432 (the FSD50K Zenodo page).
_ZENODO = "https://zenodo.org/records/4060432/files"
FSD50K_GROUND_TRUTH_URL = f"{_ZENODO}/FSD50K.ground_truth.zip?download=1"
FSD50K_AUDIO_URLS = {  # parts in disk order: .z01, .z02, ..., then .zip (the last disk, holding the directory)
    "dev": [f"{_ZENODO}/FSD50K.dev_audio.z0{k}?download=1" for k in range(1, 6)]
           + [f"{_ZENODO}/FSD50K.dev_audio.zip?download=1"],
    "eval": [f"{_ZENODO}/FSD50K.eval_audio.z01?download=1", f"{_ZENODO}/FSD50K.eval_audio.zip?download=1"],
}
FSD50K_NUM_CLASSES = 200
_GROUND_TRUTH = "FSD50K.ground_truth"
_AUDIO_FOLDERS = {"dev": "FSD50K.dev_audio", "eval": "FSD50K.eval_audio"}
_DEV_SPLITS = {"train": "train", "val": "validation"}
_VERSION = "1.0.0"


class Fsd50kRecord(NamedTuple):
  """One clip (no audio read yet)."""

  key: str  # "<dev|eval>-<CSV row index>"
  split: str
  path: str
  filename: str
  label_ids: tuple[int, ...]


def read_vocabulary(path: str | os.PathLike) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """Reads vocabulary.csv rows `index,name,mid` (a header line, if any, is skipped).

  Returns:
    (names, mids), ordered by index.

  Raises:
    FileNotFoundError: no file.
    ValueError: rows without 3 fields, indices that are not 0..n-1, duplicate names, or no rows.
  """
  path = os.fspath(path)
  with open(path, newline="", encoding="utf-8-sig") as f:
    rows = [[v.strip() for v in row] for row in csv.reader(f) if row]
  if rows and not rows[0][0].isdigit():
    rows = rows[1:]
  if not rows:
    raise ValueError(f"{path} has no rows")
  if any(len(r) != 3 for r in rows):
    raise ValueError(f"{path}: every row must be index,name,mid")
  rows.sort(key=lambda r: int(r[0]))
  if [int(r[0]) for r in rows] != list(range(len(rows))):
    raise ValueError(f"{path}: indices must be 0..{len(rows) - 1}")
  names = tuple(r[1] for r in rows)
  if len(set(names)) != len(names):
    raise ValueError(f"{path} has duplicate class names")
  return names, tuple(r[2] for r in rows)


def plan_fsd50k(ground_truth_dir: str, audio_dirs: dict[str, str],
                names: Sequence[str], mids: Sequence[str]) -> dict[str, list[Fsd50kRecord]]:
  """Reads dev.csv / eval.csv into records per split ("train", "validation", "test").

  Args:
    ground_truth_dir: the FSD50K.ground_truth folder.
    audio_dirs: {"dev": FSD50K.dev_audio folder, "eval": FSD50K.eval_audio folder}.
    names, mids: the vocabulary (class id = position).

  Raises:
    FileNotFoundError: missing CSV.
    ValueError: missing columns, labels not in the vocabulary, mids that disagree with the labels, a dev split
      value other than train / val.
  """
  class_id = {n: i for i, n in enumerate(names)}
  out: dict[str, list[Fsd50kRecord]] = {"train": [], "validation": [], "test": []}
  for part in ("dev", "eval"):
    path = os.path.join(ground_truth_dir, f"{part}.csv")
    columns, rows, _ = base.read_csv(path)
    required = ("fname", "labels", "mids") + (("split",) if part == "dev" else ())
    missing = [c for c in required if c not in columns]
    if missing:
      raise ValueError(f"{path} lacks the columns {missing} (columns: {columns})")
    for i, row in enumerate(rows):
      labels = [n.strip() for n in row["labels"].split(",") if n.strip()]
      unknown = [n for n in labels if n not in class_id]
      if unknown or not labels:
        raise ValueError(f"{path} row {i + 2}: labels {unknown or row['labels']!r} not in the vocabulary")
      row_mids = [m.strip() for m in row["mids"].split(",") if m.strip()]
      if row_mids and row_mids != [mids[class_id[n]] for n in labels]:
        raise ValueError(f"{path} row {i + 2}: mids {row_mids} disagree with labels {labels} in the vocabulary")
      if part == "dev":
        if row["split"] not in _DEV_SPLITS:
          raise ValueError(f"{path} row {i + 2}: split {row['split']!r} is not train or val")
        split = _DEV_SPLITS[row["split"]]
      else:
        split = "test"
      filename = f"{row['fname']}.wav"
      out[split].append(Fsd50kRecord(key=f"{part}-{i:08d}", split=split,
                                     path=os.path.join(audio_dirs[part], filename), filename=filename,
                                     label_ids=tuple(class_id[n] for n in labels)))
  return {s: r for s, r in out.items() if r}


# ------------------------------------------------------------------------------------------- split zip archives
# An Info-ZIP split archive (`zip -s`) is a zip file cut into disks: parts .z01, .z02, ... and the last one .zip,
# which holds the central directory. Each directory entry gives the disk where its local header starts and the
# offset within that disk (APPNOTE.TXT 4.3.12, 4.4.13, 4.4.16; zip64 in 4.3.14, 4.3.15, 4.5.3). `open_split_zip`
# presents the parts as one ordinary zip: the parts' bytes up to the directory, then a rewritten directory with
# absolute offsets on disk 0, and zip64 end records.

_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")  # central directory file header, 46 bytes
_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record, 22 bytes
_EOCD64 = struct.Struct("<4sQ2H2L4Q")  # zip64 end of central directory record, 56 bytes
_LOCATOR64 = struct.Struct("<4sLQL")  # zip64 end of central directory locator, 20 bytes
_ZIP64_OFFSET_LIMIT = 0xFFFFFFFF  # offsets at or above it go to the zip64 extra field


class _JoinedParts(io.RawIOBase):
  """Read-only, seekable view of files[0] + files[1] + ... up to `data_end`, followed by the bytes `tail`."""

  def __init__(self, paths: Sequence[str], data_end: int, tail: bytes):
    super().__init__()
    self._files = [open(p, "rb") for p in paths]  # pylint: disable=consider-using-with
    sizes = [os.path.getsize(p) for p in paths]
    self._starts = [0, *itertools.accumulate(sizes[:-1])]
    self._sizes = sizes
    self._data_end = data_end
    self._tail = tail
    self._size = data_end + len(tail)
    self._pos = 0

  def readable(self) -> bool:
    return True

  def seekable(self) -> bool:
    return True

  def tell(self) -> int:
    return self._pos

  def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
    base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
    self._pos = max(0, base + offset)
    return self._pos

  def readinto(self, buffer) -> int:
    view = memoryview(buffer).cast("B")
    filled = 0
    while filled < len(view) and self._pos < self._size:
      if self._pos >= self._data_end:
        start = self._pos - self._data_end
        chunk = self._tail[start:start + len(view) - filled]
      else:
        disk = bisect.bisect_right(self._starts, self._pos) - 1
        within = self._pos - self._starts[disk]
        n = min(len(view) - filled, self._sizes[disk] - within, self._data_end - self._pos)
        self._files[disk].seek(within)
        chunk = self._files[disk].read(n)
        if not chunk:
          raise OSError(f"split zip part {disk} ended early")
      view[filled:filled + len(chunk)] = chunk
      filled += len(chunk)
      self._pos += len(chunk)
    return filled

  def close(self) -> None:
    for f in self._files:
      f.close()
    super().close()


def _read_span(paths: Sequence[str], starts: Sequence[int], position: int, size: int) -> bytes:
  """`size` bytes of the concatenated parts from absolute `position`."""
  out = bytearray()
  disk = bisect.bisect_right(starts, position) - 1
  within = position - starts[disk]
  while len(out) < size:
    with open(paths[disk], "rb") as f:
      f.seek(within)
      out += f.read(size - len(out))
    disk, within = disk + 1, 0
    if len(out) < size and disk >= len(paths):
      raise zipfile.BadZipFile("split zip: the central directory runs past the last part")
  return bytes(out)


def _zip64_values(extra: bytes, fields: Sequence[bool]) -> tuple[list[int], bytes]:
  """Values of the zip64 extra block (usize, csize, offset: 8 bytes; disk: 4 bytes, each present when its flag is
  set), and the extra field without that block."""
  values: list[int] = []
  kept = bytearray()
  pos = 0
  while pos + 4 <= len(extra):
    block_id, length = struct.unpack_from("<HH", extra, pos)
    body = extra[pos + 4:pos + 4 + length]
    if block_id == 0x0001:
      at = 0
      for present, width in zip(fields, (8, 8, 8, 4)):
        if present:
          values.append(int.from_bytes(body[at:at + width], "little"))
          at += width
    else:
      kept += extra[pos:pos + 4 + length]
    pos += 4 + length
  return values, bytes(kept)


def open_split_zip(parts: Sequence[str | os.PathLike]) -> zipfile.ZipFile:
  """Opens an Info-ZIP split archive (parts in disk order: name.z01, name.z02, ..., name.zip) as one ZipFile.

  Nothing is copied: members are read from the parts in place (a single, unsplit .zip works too).

  Args:
    parts: the part files, last one the `.zip`.

  Returns:
    zipfile.ZipFile (read mode); close it when done.

  Raises:
    zipfile.BadZipFile: no end of central directory record, a part count that disagrees with the archive, or a
      malformed directory.
  """
  paths = [os.fspath(p) for p in parts]
  if not paths:
    raise ValueError("open_split_zip needs at least one part")
  sizes = [os.path.getsize(p) for p in paths]
  starts = [0, *itertools.accumulate(sizes[:-1])]
  with open(paths[-1], "rb") as f:
    f.seek(max(0, sizes[-1] - (_EOCD.size + 0xFFFF)))
    last_tail = f.read()
  at = last_tail.rfind(b"PK\x05\x06")
  if at < 0:
    raise zipfile.BadZipFile(f"{paths[-1]}: no end of central directory record")
  _, disk_no, cd_disk, _, total, cd_size, cd_offset, _ = _EOCD.unpack_from(last_tail, at)
  if at >= _LOCATOR64.size and last_tail[at - _LOCATOR64.size:at - _LOCATOR64.size + 4] == b"PK\x06\x07":
    _, eocd64_disk, eocd64_offset, _ = _LOCATOR64.unpack_from(last_tail, at - _LOCATOR64.size)
    record = _read_span(paths, starts, starts[eocd64_disk] + eocd64_offset, _EOCD64.size)
    if record[:4] != b"PK\x06\x06":
      raise zipfile.BadZipFile(f"{paths[-1]}: bad zip64 end of central directory record")
    _, _, _, _, disk_no, cd_disk, _, total, cd_size, cd_offset = _EOCD64.unpack(record)
  if disk_no + 1 != len(paths):
    raise zipfile.BadZipFile(f"{paths[-1]} is disk {disk_no + 1} of a split archive, but {len(paths)} parts were "
                             "given")
  data_end = starts[cd_disk] + cd_offset
  directory = _read_span(paths, starts, data_end, cd_size)
  entries = bytearray()
  pos = 0
  for _ in range(total):
    fields = list(_CENTRAL.unpack_from(directory, pos))
    if fields[0] != b"PK\x01\x02":
      raise zipfile.BadZipFile("split zip: bad central directory entry")
    usize, csize, name_len, extra_len, comment_len, disk, offset = (fields[11], fields[10], fields[12],
                                                                     fields[13], fields[14], fields[15], fields[18])
    name = directory[pos + _CENTRAL.size:pos + _CENTRAL.size + name_len]
    extra = directory[pos + _CENTRAL.size + name_len:pos + _CENTRAL.size + name_len + extra_len]
    comment_at = pos + _CENTRAL.size + name_len + extra_len
    comment = directory[comment_at:comment_at + comment_len]
    pos = comment_at + comment_len
    flags = (usize == 0xFFFFFFFF, csize == 0xFFFFFFFF, offset == 0xFFFFFFFF, disk == 0xFFFF)
    values, other_extra = _zip64_values(extra, flags)
    values = iter(values)
    usize64 = next(values) if flags[0] else None
    csize64 = next(values) if flags[1] else None
    offset = next(values) if flags[2] else offset
    disk = next(values) if flags[3] else disk
    absolute = starts[disk] + offset
    zip64 = [v for v in (usize64, csize64) if v is not None]
    if absolute >= _ZIP64_OFFSET_LIMIT:
      zip64.append(absolute)
    new_extra = other_extra
    if zip64:
      body = b"".join(struct.pack("<Q", v) for v in zip64)
      new_extra = struct.pack("<HH", 0x0001, len(body)) + body + other_extra
    fields[13] = len(new_extra)
    fields[15] = 0
    fields[18] = 0xFFFFFFFF if absolute >= _ZIP64_OFFSET_LIMIT else absolute
    entries += _CENTRAL.pack(*fields) + name + new_extra + comment
  new_cd_size = len(entries)
  tail = (bytes(entries)
          + _EOCD64.pack(b"PK\x06\x06", _EOCD64.size - 12, 45, 45, 0, 0, total, total, new_cd_size, data_end)
          + _LOCATOR64.pack(b"PK\x06\x07", 0, data_end + new_cd_size, 1)
          + _EOCD.pack(b"PK\x05\x06", 0, 0, min(total, 0xFFFF), min(total, 0xFFFF), min(new_cd_size, 0xFFFFFFFF),
                       min(data_end, 0xFFFFFFFF), 0))
  stream = io.BufferedReader(_JoinedParts(paths, data_end, tail), buffer_size=1 << 20)
  return zipfile.ZipFile(stream)


def _extract_split_zip(parts: Sequence[str], dest: str) -> str:
  """Extracts a split archive into `dest` once (a finished extraction leaves `dest/.extracted`)."""
  if os.path.exists(os.path.join(dest, ".extracted")):
    return dest
  partial = dest + ".partial"
  shutil.rmtree(partial, ignore_errors=True)
  with open_split_zip(parts) as archive:
    archive.extractall(partial)
  open(os.path.join(partial, ".extracted"), "w").close()
  shutil.rmtree(dest, ignore_errors=True)
  os.replace(partial, dest)
  return dest


def _find_folder(root: str, name: str) -> str:
  found = base.find_under(root, name)
  if found is None or not os.path.isdir(found):
    raise FileNotFoundError(f"no folder {name} in {root} or the folders below it")
  return found


class Fsd50kBuilder(AudioClipsBuilder, skip_registration=True):
  """FSD50K -> array_record, splits train / validation / test (see the module docstring).

  Args (keyword-only):
    options: WaveformOptions.
    data_dir: root folder of the TFDS datasets; files go to `data_dir/fsd50k/config_name/1.0.0/`.
    manual_dir: local FSD50K copy; None: download FSD50K_GROUND_TRUTH_URL and FSD50K_AUDIO_URLS.
    config_name: tfds config name (default "sr{sample_rate}_{dtype}").

  Raises:
    FileNotFoundError: a manual copy without FSD50K.ground_truth / FSD50K.dev_audio / FSD50K.eval_audio.
    ValueError: bad vocabulary.csv.
  """

  name = "fsd50k"
  VERSION = tfds.core.Version(_VERSION)
  RELEASE_NOTES = {_VERSION: "FSD50K, multi-hot labels over the 200-class vocabulary, TF-free features."}

  def __init__(self, *, options: WaveformOptions, data_dir: str | os.PathLike,
               manual_dir: str | os.PathLike | None = None, config_name: str | None = None):
    self.manual_dir = None if manual_dir is None else os.path.abspath(os.fspath(manual_dir))
    self.ground_truth_dir: str | None = None
    self.audio_dirs: dict[str, str] = {}
    self.vocabulary: tuple[tuple[str, ...], tuple[str, ...]] | None = None
    self.records: list[Fsd50kRecord] = []
    if self.manual_dir is None:
      sources = {"urls": [FSD50K_GROUND_TRUTH_URL, FSD50K_AUDIO_URLS]}
    else:
      self.ground_truth_dir = _find_folder(self.manual_dir, _GROUND_TRUTH)
      self.audio_dirs = {part: _find_folder(self.manual_dir, folder) for part, folder in _AUDIO_FOLDERS.items()}
      self.vocabulary = read_vocabulary(os.path.join(self.ground_truth_dir, "vocabulary.csv"))
      sources = {f: base.file_sha256(os.path.join(self.ground_truth_dir, f))
                 for f in ("vocabulary.csv", "dev.csv", "eval.csv")}
    super().__init__(
        options=options, data_dir=data_dir, config_name=config_name or f"sr{options.sample_rate}_{options.dtype}",
        description=f"FSD50K at {options.sample_rate} Hz {options.dtype}",
        fingerprint=base.fingerprint_of(options.fingerprint_fields(), sources, _VERSION))

  @property
  def num_classes(self) -> int:
    """Vocabulary size (200; before a download the official count is assumed)."""
    return FSD50K_NUM_CLASSES if self.vocabulary is None else len(self.vocabulary[0])

  @property
  def class_names(self) -> tuple[str, ...]:
    """Vocabulary names; class id = vocabulary index."""
    if self.vocabulary is not None:
      return self.vocabulary[0]
    return tuple(self.info.features["label"].names)

  def _info(self) -> tfds.core.DatasetInfo:
    if self.vocabulary is None:  # names are set once the vocabulary is downloaded (see _split_generators)
      label = tfds.features.ClassLabel(num_classes=self.num_classes)
      metadata = tfds.core.MetadataDict(sample_rate=self.options.sample_rate, dtype=self.options.dtype)
    else:
      label = tfds.features.ClassLabel(names=list(self.vocabulary[0]))
      metadata = tfds.core.MetadataDict(sample_rate=self.options.sample_rate, dtype=self.options.dtype,
                                        class_names=list(self.vocabulary[0]), class_mids=list(self.vocabulary[1]))
    features = tfds.features.FeaturesDict({
        "waveform": self.waveform_feature(),
        "label": label,
        "labels": tfds.features.Tensor(shape=(self.num_classes,), dtype=np.uint8),
        "filename": tfds.features.Text(),
    })
    return tfds.core.DatasetInfo(
        builder=self,
        description=(f"FSD50K: waveform (samples,) {self.options.dtype} at {self.options.sample_rate} Hz, "
                     f"{self.num_classes} classes (multi-hot); splits train / validation (dev) and test (eval)."),
        features=features,
        homepage="https://zenodo.org/records/4060432",
        disable_shuffling=True,
        metadata=metadata,
    )

  def _download(self, dl_manager) -> None:
    # The "?download=1" URL hides the ".zip" that tfds guesses the extraction method from: name it explicitly.
    ground_truth = tfds.download.Resource(url=FSD50K_GROUND_TRUTH_URL, extract_method=tfds.download.ExtractMethod.ZIP)
    self.ground_truth_dir = _find_folder(os.fspath(dl_manager.download_and_extract(ground_truth)), _GROUND_TRUTH)
    parts = dl_manager.download(FSD50K_AUDIO_URLS)
    for part, folder in _AUDIO_FOLDERS.items():
      paths = [os.fspath(p) for p in parts[part]]
      extracted = _extract_split_zip(paths, paths[-1] + ".extracted")
      self.audio_dirs[part] = _find_folder(extracted, folder)
    names, mids = read_vocabulary(os.path.join(self.ground_truth_dir, "vocabulary.csv"))
    if len(names) != FSD50K_NUM_CLASSES:
      raise ValueError(f"the downloaded vocabulary.csv has {len(names)} classes, expected {FSD50K_NUM_CLASSES}")
    self.vocabulary = (names, mids)
    self.info.features["label"].names = list(names)
    self.info.metadata.update(class_names=list(names), class_mids=list(mids))

  def _split_generators(self, dl_manager):
    if self.manual_dir is None:
      self._download(dl_manager)
    by_split = plan_fsd50k(self.ground_truth_dir, self.audio_dirs, *self.vocabulary)
    self.records = [r for recs in by_split.values() for r in recs]
    self._planned = collections.Counter({s: len(r) for s, r in by_split.items()})
    return {split: self._generate_examples(records) for split, records in by_split.items()}

  def _generate_examples(self, records: Sequence[Fsd50kRecord]) -> Iterator[tuple[str, dict[str, Any]]]:
    for record, waveform in self.decoded(records):
      multi_hot = np.zeros((self.num_classes,), np.uint8)
      multi_hot[list(record.label_ids)] = 1
      yield record.key, {"waveform": waveform, "label": record.label_ids[0], "labels": multi_hot,
                         "filename": record.filename}

  @property
  def source_description(self) -> str:
    return f"FSD50K at {self.manual_dir or _ZENODO}"

  def report_extras(self) -> dict[str, Any]:
    return {"ground_truth_dir": self.ground_truth_dir, "audio_dirs": dict(self.audio_dirs),
            "class_names": list(self.class_names), "num_rows": dict(self._planned)}


def build_fsd50k(
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
) -> Fsd50kBuilder:
  """Builds (or reuses) FSD50K as array_record; returns its builder.

  Files go to `data_dir/fsd50k/config_name/1.0.0/` with `build_report.json`. A finished build with the same
  fingerprint (options + ground-truth CSV digests, or + the URLs when downloaded) is reused.

  Args:
    manual_dir: local FSD50K copy (see the module docstring); None: download the Zenodo files with tfds' download
      manager (into `download_dir`, default `data_dir/downloads`; about 30 GB, plus as much extracted).
    data_dir: root folder of TFDS datasets.
    sample_rate: stored rate in Hz (FSD50K is 44100 Hz; other rates are resampled with soxr HQ).
    dtype: "int16" or "float32" waveform storage.
    max_duration_s: keep the first seconds of each clip (None: whole clip, 0.3 to 30 s).
    num_workers: decoding threads.
    config_name: tfds config name (default "sr{sample_rate}_{dtype}").
    overwrite: rebuild when the existing build has another fingerprint (default: raise).
    download_dir: tfds download folder.

  Returns:
    Fsd50kBuilder: `.as_data_source("train")` -> random-access source of dicts (module docstring);
    `.class_names`.

  Raises:
    FileNotFoundError: incomplete manual copy.
    ValueError: bad options or CSVs (see `plan_fsd50k`), another build in the folder and `overwrite=False`, a split
      whose clips are all unreadable.
  """
  options = WaveformOptions(sample_rate=sample_rate, dtype=dtype, max_duration_s=max_duration_s,
                            num_workers=num_workers)
  make = functools.partial(Fsd50kBuilder, options=options, data_dir=os.path.abspath(os.fspath(data_dir)),
                           manual_dir=manual_dir, config_name=config_name)
  return base.prepare_and_report(make(), make, overwrite=overwrite, download_dir=download_dir)
