"""Tests of the dataset builders (data_pipelines/builders/{esc50,audioset,clotho,audiocaps,fsd50k}.py).

Each dataset is built from a miniature synthetic copy with the official CSV layouts and read back with tfds data
sources. References: soundfile reads of the written files (int16 at the native rate must match bit for bit),
librosa's soxr_hq resampler, the CSV rows themselves, and Info-ZIP's `zip -s` for split archives.
"""

import csv
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import zipfile

import librosa
import numpy as np
import pytest
import soundfile as sf
import tensorflow_datasets as tfds

from data_pipelines.builders import audiocaps
from data_pipelines.builders import audioset
from data_pipelines.builders import clotho
from data_pipelines.builders import esc50
from data_pipelines.builders import fsd50k

REPO = pathlib.Path(__file__).resolve().parents[1]
SR = 8000


def _write_audio(path, seconds=0.1, sr=SR, seed=0, subtype="PCM_16"):
  """A short sine + noise clip; returns what soundfile reads back as int16 (the reference)."""
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * sr)) / sr
  x = 0.4 * np.sin(2 * np.pi * (200 + 50 * seed) * t) + 0.05 * rng.standard_normal(t.size)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  sf.write(path, x.astype(np.float32), sr, subtype=subtype)
  return sf.read(path, dtype="int16")[0]


def _write_csv(path, header, rows):
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    if header:
      writer.writerow(header)
    writer.writerows(rows)


def _examples(builder, split):
  source = builder.as_data_source(split)
  return [source[i] for i in range(len(source))]


class FakeDownloadManager:
  """Stands in for tfds' DownloadManager: serves local files for URLs and records every call."""

  downloaded_size = 0

  def __init__(self, files, extract_root):
    self.files = {url: os.fspath(path) for url, path in files.items()}
    self.extract_root = pathlib.Path(extract_root)
    self.calls = []

  def _map(self, fn, urls):
    if isinstance(urls, tfds.download.Resource):
      return fn(urls.url)
    if isinstance(urls, dict):
      return {k: self._map(fn, v) for k, v in urls.items()}
    if isinstance(urls, (list, tuple)):
      return [self._map(fn, v) for v in urls]
    return fn(urls)

  def download(self, urls):
    self.calls.append(("download", urls))
    return self._map(lambda url: pathlib.Path(self.files[url]), urls)

  def download_and_extract(self, urls):
    self.calls.append(("download_and_extract", urls))

    def extract(url):
      dest = self.extract_root / f"extracted{len(list(self.extract_root.glob('extracted*')))}"
      with zipfile.ZipFile(self.files[url]) as z:
        z.extractall(dest)
      return dest

    return self._map(extract, urls)


def _use_fake(monkeypatch, builder_cls, fake):
  monkeypatch.setattr(builder_cls, "_make_download_manager", lambda self, download_dir, download_config: fake)


# ------------------------------------------------------------------------------------------------------ ESC-50


def _esc50_copy(root):
  """ESC-50-master with 2 clips per fold; returns (rows, {filename: int16 reference})."""
  base = pathlib.Path(root) / "ESC-50-master"
  rows, refs = [], {}
  targets = [0, 41, 10, 49, 20, 33, 5, 12, 41, 0]
  for i, target in enumerate(targets):
    fold = 1 + i // 2
    src = f"{100000 + i // 3}"  # some clips share a source recording
    filename = f"{fold}-{src}-{'AB'[i % 2]}-{target}.wav"
    rows.append((filename, fold, target, esc50.ESC50_CATEGORIES[target], str(target in (0, 41, 10)), src,
                 "AB"[i % 2]))
    refs[filename] = _write_audio(base / "audio" / filename, seconds=0.05 + 0.01 * i, seed=i)
  _write_csv(base / "meta" / "esc50.csv", ["filename", "fold", "target", "category", "esc10", "src_file", "take"],
             rows)
  return base, rows, refs


def _check_esc50(builder, rows, refs):
  assert builder.class_names == esc50.ESC50_CATEGORIES and len(builder.class_names) == 50
  assert sorted(builder.info.splits) == [f"fold{k}" for k in range(1, 6)]
  for fold in range(1, 6):
    expected = [r for r in rows if r[1] == fold]
    got = _examples(builder, f"fold{fold}")
    assert [g["filename"].decode() for g in got] == [r[0] for r in expected]  # CSV order within the fold
    for ex, (filename, _, target, category, is_esc10, src, take) in zip(got, expected):
      assert ex["waveform"].dtype == np.int16
      np.testing.assert_array_equal(ex["waveform"], refs[filename])
      assert ex["label"] == target and builder.info.features["label"].int2str(ex["label"]) == category
      np.testing.assert_array_equal(ex["labels"], np.eye(50, dtype=np.uint8)[target])
      assert ex["fold"] == fold and bool(ex["esc10"]) == (is_esc10 == "True")
      assert ex["src_file"].decode() == src and ex["take"].decode() == take


def test_esc50_manual_folds_labels_and_waveforms(tmp_path):
  base, rows, refs = _esc50_copy(tmp_path / "src")
  builder = esc50.build_esc50(tmp_path / "src", tmp_path / "tfds", SR)  # the folder above ESC-50-master
  _check_esc50(builder, rows, refs)
  train, test = esc50.cross_validation_splits(5)
  assert (train, test) == ("fold1+fold2+fold3+fold4", "fold5")
  assert [e["filename"].decode() for e in _examples(builder, train)] == [r[0] for r in rows if r[1] != 5]
  report = builder.build_report
  assert report["num_skipped"] == 0 and report["num_examples"] == {f"fold{k}": 2 for k in range(1, 6)}
  # A category that is not ESC-50's name of its target is refused.
  rows[3] = rows[3][:3] + ("cat",) + rows[3][4:]
  _write_csv(base / "meta" / "esc50.csv", ["filename", "fold", "target", "category", "esc10", "src_file", "take"],
             rows)
  with pytest.raises(ValueError, match="not the ESC-50 name"):
    esc50.build_esc50(base, tmp_path / "tfds2", SR)


def test_esc50_download_path_calls_dl_manager(tmp_path, monkeypatch):
  base, rows, refs = _esc50_copy(tmp_path / "src")
  archive = tmp_path / "master.zip"
  with zipfile.ZipFile(archive, "w") as z:
    for path in sorted(base.rglob("*")):
      z.write(path, path.relative_to(tmp_path / "src"))
  fake = FakeDownloadManager({esc50.ESC50_URL: archive}, tmp_path)
  _use_fake(monkeypatch, esc50.Esc50Builder, fake)
  builder = esc50.build_esc50(None, tmp_path / "tfds", SR)
  assert fake.calls == [("download_and_extract", esc50.ESC50_URL)]
  assert esc50.ESC50_URL == "https://github.com/karolpiczak/ESC-50/archive/master.zip"
  _check_esc50(builder, rows, refs)
  # A second call finds the finished build: no download, nothing decoded.
  again = esc50.build_esc50(None, tmp_path / "tfds", SR)
  assert len(fake.calls) == 1 and again.data_dir == builder.data_dir


# ---------------------------------------------------------------------------------------------------- AudioSet

_AUDIOSET_CLASSES = [("/m/09x0r", "Speech"), ("/m/04rlf", "Music"), ("/m/0jbk", "Animal"),
                     ("/m/0bt9lr", "Dog"), ("/m/07yv9", "Vehicle"), ("/m/06mb1", "Rain")]


def _write_segments(path, segments):
  lines = ["# Segments csv created Sun Mar  5 10:54:31 2017",
           f"# num_ytids={len(segments)}, num_segs={len(segments)}, num_unique_labels=527, num_positive_labels=9",
           "# YTID, start_seconds, end_seconds, positive_labels"]
  lines += [f'{y}, {s:.3f}, {e:.3f}, "{",".join(m)}"' for y, s, e, m in segments]
  pathlib.Path(path).write_text("\n".join(lines) + "\n")


def test_audioset_local_copy_with_missing_and_corrupt_clips(tmp_path):
  meta, dir_a, dir_b = tmp_path / "meta", tmp_path / "audio_a", tmp_path / "audio_b"
  meta.mkdir()
  _write_csv(meta / "class_labels_indices.csv", ["index", "mid", "display_name"],
             [(i, m, n) for i, (m, n) in enumerate(_AUDIOSET_CLASSES)])
  balanced = [("--PJHxphWEs", 30.0, 40.0, ["/m/09x0r", "/m/07yv9"]),
              ("-0RWZT-miFs", 420.0, 430.0, ["/m/0bt9lr", "/m/0jbk"]),
              ("-1nilez17Dg", 10.0, 20.0, ["/m/04rlf"]),  # no audio file anywhere
              ("-3pPrlCm6gg", 0.0, 10.0, ["/m/06mb1"])]  # corrupt file
  evaluation = [("--4gqARaEJE", 0.0, 10.0, ["/m/0jbk", "/m/04rlf", "/m/09x0r"]),
                ("Y-5F-xzbx2o", 15.5, 25.5, ["/m/07yv9"])]  # a YTID that itself starts with Y
  _write_segments(meta / "balanced_train_segments.csv", balanced)
  _write_segments(meta / "eval_segments.csv", evaluation)
  _write_segments(meta / "unbalanced_train_segments.csv", [("zzzzzzzzzzz", 0.0, 10.0, ["/m/09x0r"])])
  refs = {
      "--PJHxphWEs": _write_audio(dir_a / "balanced" / "Y--PJHxphWEs.wav", seed=1),  # PANNs layout
      "-0RWZT-miFs": _write_audio(dir_b / "-0RWZT-miFs.flac", seed=2),
      "--4gqARaEJE": _write_audio(dir_b / "eval" / "Y--4gqARaEJE.wav", seed=3),
      "Y-5F-xzbx2o": _write_audio(dir_a / "Y-5F-xzbx2o.wav", seed=4),
  }
  good = (dir_a / "balanced" / "Y--PJHxphWEs.wav").read_bytes()
  (dir_a / "Y-3pPrlCm6gg.wav").write_bytes(good[: len(good) // 2])  # truncated
  (dir_a / "notes.txt").write_text("not audio, ignored")

  builder = audioset.build_audioset(meta, [dir_a, dir_b], tmp_path / "tfds", SR, num_workers=2)
  names = [n for _, n in _AUDIOSET_CLASSES]
  mids = [m for m, _ in _AUDIOSET_CLASSES]
  assert builder.class_names == tuple(names)
  assert builder.info.metadata["class_mids"] == mids
  assert sorted(builder.info.splits) == ["balanced_train", "eval"]  # unbalanced has no audio: left out
  for split, segments in (("balanced_train", balanced), ("eval", evaluation)):
    got = _examples(builder, split)
    expected = [s for s in segments if s[0] in refs]
    assert [g["ytid"].decode() for g in got] == [s[0] for s in expected]
    for ex, (ytid, start, end, row_mids) in zip(got, expected):
      np.testing.assert_array_equal(ex["waveform"], refs[ytid])
      assert ex["label"] == mids.index(row_mids[0])
      np.testing.assert_array_equal(ex["labels"], [int(m in row_mids) for m in mids])
      assert ex["start_seconds"] == pytest.approx(start) and ex["end_seconds"] == pytest.approx(end)
  assert _examples(builder, "balanced_train")[0]["filename"].decode() == os.path.join("balanced", "Y--PJHxphWEs.wav")
  report = json.loads(pathlib.Path(builder.report_path).read_text())
  reasons = {s["filename"]: s["reason"] for s in report["skipped"]}
  assert report["num_skipped"] == 2 and set(reasons) == {"-1nilez17Dg", "Y-3pPrlCm6gg.wav"}
  assert reasons["-1nilez17Dg"].startswith("file not found")
  assert reasons["Y-3pPrlCm6gg.wav"].startswith("truncated")
  assert report["skipped_by_reason"] == {"file not found": 1, "truncated": 1}
  assert report["splits_without_audio"] == ["unbalanced_train"]
  assert report["clips_with_audio"] == {"balanced_train": 3, "eval": 2}
  assert report["num_examples"] == {"balanced_train": 2, "eval": 2}
  # Asking for a split without any audio, or giving no local copy, is an error that says why.
  with pytest.raises(ValueError, match="unbalanced_train"):
    audioset.build_audioset(meta, [dir_a], tmp_path / "tfds2", SR, splits=["unbalanced_train"])
  with pytest.raises(ValueError, match="not publicly downloadable"):
    audioset.build_audioset(None, None, tmp_path / "tfds3", SR)


# ------------------------------------------------------------------------------------------------------ Clotho

_CLOTHO_CLIPS = {
    "development": [("Water dripping.wav", ["Water drips slowly, into a metal sink.", "A tap is dripping",
                                            "Drops of water fall", 'Someone says "hi" near water', "Drip drip"]),
                    ("Ambience, café №2.wav", ["People talk in a café", "Cups clink", "A crowd chatters",
                                               "Background chatter", "Naïve voices murmur"])],
    "validation": [("birds.wav", ["Birds sing", "Birds chirp", "Many birds", "Birds at dawn", "Chirping"])],
    "evaluation": [("rain 1.wav", ["Rain falls", "It rains", "Rain on a roof", "Heavy rain", "Rain, then wind"]),
                   ("car.wav", ["A car passes", "An engine", "Traffic", "A car drives by", "Car noise"])],
}


def _clotho_copy(root, sr=SR):
  root = pathlib.Path(root)
  refs = {}
  for folder, clips in _CLOTHO_CLIPS.items():
    _write_csv(root / f"clotho_captions_{folder}.csv", ["file_name"] + [f"caption_{k}" for k in range(1, 6)],
               [(name, *caps) for name, caps in clips])
    for i, (name, _) in enumerate(clips):
      refs[name] = _write_audio(root / folder / name, seconds=0.07 + 0.01 * i, sr=sr, seed=len(refs))
  return refs


def _check_clotho(builder, refs):
  assert sorted(builder.info.splits) == ["test", "train", "validation"]
  for split, folder in clotho.CLOTHO_SPLITS.items():
    got = _examples(builder, split)
    assert [g["filename"].decode() for g in got] == [name for name, _ in _CLOTHO_CLIPS[folder]]
    for ex, (name, caps) in zip(got, _CLOTHO_CLIPS[folder]):
      np.testing.assert_array_equal(ex["waveform"], refs[name])
      assert ex["captions"].shape == (5,) and [c.decode() for c in ex["captions"]] == caps
      assert ex["caption"].decode() == caps[0]


def test_clotho_manual_captions_and_resampling(tmp_path):
  refs = _clotho_copy(tmp_path / "clotho")
  builder = clotho.build_clotho(tmp_path / "clotho", tmp_path / "tfds", SR)
  _check_clotho(builder, refs)
  assert builder.build_report["num_clips"] == {"train": 2, "validation": 1, "test": 2}
  # float32 at another rate: soxr HQ resampling, as librosa's soxr_hq.
  resampled = clotho.build_clotho(tmp_path / "clotho", tmp_path / "tfds", 16000, dtype="float32", splits=["test"])
  assert list(resampled.info.splits) == ["test"]
  for ex in _examples(resampled, "test"):
    x, sr = sf.read(tmp_path / "clotho" / "evaluation" / ex["filename"].decode(), dtype="float32")
    ref = librosa.resample(x, orig_sr=sr, target_sr=16000, res_type="soxr_hq")
    assert ex["waveform"].dtype == np.float32 and ex["waveform"].shape == ref.shape
    np.testing.assert_allclose(ex["waveform"], ref, atol=1e-6)


def test_clotho_download_path_calls_dl_manager(tmp_path, monkeypatch):
  refs = _clotho_copy(tmp_path / "src")
  files = {}
  for key, url in clotho.CLOTHO_URLS.items():
    folder, kind = key.rsplit("_", 1)
    if kind == "captions":
      files[url] = tmp_path / "src" / f"clotho_captions_{folder}.csv"
    else:
      files[url] = tmp_path / "dl" / f"clotho_audio_{folder}.7z"
      files[url].parent.mkdir(exist_ok=True)
      files[url].write_bytes(b"7z\xbc\xaf\x27\x1c stand-in")
  extracted = []

  def fake_extract(archive, dest):  # no 7z tool here: copy the folder the archive would hold
    folder = pathlib.Path(archive).name[len("clotho_audio_"):-len(".7z")]
    shutil.copytree(tmp_path / "src" / folder, pathlib.Path(dest) / folder)
    extracted.append(folder)
    return dest

  monkeypatch.setattr(clotho, "extract_7z", fake_extract)
  fake = FakeDownloadManager(files, tmp_path)
  _use_fake(monkeypatch, clotho.ClothoBuilder, fake)
  builder = clotho.build_clotho(None, tmp_path / "tfds", SR)
  assert len(fake.calls) == 1 and fake.calls[0][0] == "download"
  assert sorted(fake.calls[0][1].values()) == sorted(clotho.CLOTHO_URLS.values())
  assert all(u.startswith("https://zenodo.org/records/4783391/files/clotho_") for u in clotho.CLOTHO_URLS.values())
  assert sorted(extracted) == sorted(_CLOTHO_CLIPS)
  _check_clotho(builder, refs)


def test_clotho_7z_without_extractor_says_what_to_install(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "py7zr", None)  # import py7zr -> ImportError
  monkeypatch.setattr(shutil, "which", lambda name: None)
  with pytest.raises(RuntimeError, match="py7zr"):
    clotho.extract_7z(tmp_path / "a.7z", tmp_path / "out")


# --------------------------------------------------------------------------------------------------- AudioCaps


def test_audiocaps_groups_captions_per_clip_and_skips_missing_audio(tmp_path):
  meta, audio = tmp_path / "meta", tmp_path / "audio"
  header = ["audiocap_id", "youtube_id", "start_time", "caption"]
  train = [(91139, "r1ssZzVqgmw", 30, "A man speaks, then a dog barks"),
           (58146, "AHQnPvPWwtQ", 0, "Water flows, birds chirp"),
           (11542, "missingClip", 10, "Wind blows")]
  val = [(97151, "vfY_TJq7n_U", 130, "Rustling occurs, ducks quack"),
         (97157, "8QMB6DfMW5I", 0, "A train horn blows"),
         (97152, "vfY_TJq7n_U", 130, "Ducks quack and water splashes"),
         (97153, "vfY_TJq7n_U", 130, "Birds, then a duck"),
         (97158, "8QMB6DfMW5I", 0, "A horn, then rails clack")]
  _write_csv(meta / "train.csv", header, train)
  _write_csv(meta / "val.csv", header, val)
  refs = {"r1ssZzVqgmw": _write_audio(audio / "train" / "Yr1ssZzVqgmw.wav", seed=1),
          "AHQnPvPWwtQ": _write_audio(audio / "train" / "AHQnPvPWwtQ.flac", seed=2),
          "vfY_TJq7n_U": _write_audio(audio / "val" / "vfY_TJq7n_U.wav", seed=3),
          "8QMB6DfMW5I": _write_audio(audio / "val" / "Y8QMB6DfMW5I.wav", seed=4)}
  builder = audiocaps.build_audiocaps(meta, audio, tmp_path / "tfds", SR)
  assert sorted(builder.info.splits) == ["train", "validation"]  # no test.csv
  for split, rows in (("train", train), ("validation", val)):
    clips = list(dict.fromkeys(r[1] for r in rows if r[1] in refs))  # order of first appearance
    got = _examples(builder, split)
    assert [g["youtube_id"].decode() for g in got] == clips
    for ex, ytid in zip(got, clips):
      mine = [r for r in rows if r[1] == ytid]
      np.testing.assert_array_equal(ex["waveform"], refs[ytid])
      assert [c.decode() for c in ex["captions"]] == [r[3] for r in mine]
      np.testing.assert_array_equal(ex["audiocap_ids"], [r[0] for r in mine])
      assert ex["caption"].decode() == mine[0][3] and ex["start_time"] == mine[0][2]
  report = builder.build_report
  assert report["num_captions"] == {"train": 3, "validation": 5}
  assert [(s["filename"], s["reason"][:14]) for s in report["skipped"]] == [("missingClip", "file not found")]
  with pytest.raises(ValueError, match="not publicly downloadable"):
    audiocaps.build_audiocaps(None, None, tmp_path / "tfds2", SR)


# ------------------------------------------------------------------------------------------------------ FSD50K


def _fsd50k_copy(root, vocabulary, *, noise_samples=None):
  """FSD50K.ground_truth + audio folders; returns (dev rows, eval rows, {fname: int16 reference})."""
  root = pathlib.Path(root)
  mids = {n: m for _, n, m in vocabulary}
  dev = [("64760", ["Electric_guitar", "Guitar", "Music"], "train"), ("16399", ["Bark", "Dog"], "val"),
         ("21914", ["Music"], "train"), ("5312", ["Dog", "Bark", "Music"], "train")]
  evaluation = [("37199", ["Guitar", "Electric_guitar"])]
  gt = root / "FSD50K.ground_truth"
  _write_csv(gt / "vocabulary.csv", None, vocabulary)  # the official file has no header line
  _write_csv(gt / "dev.csv", ["fname", "labels", "mids", "split"],
             [(f, ",".join(n), ",".join(mids[x] for x in n), s) for f, n, s in dev])
  _write_csv(gt / "eval.csv", ["fname", "labels", "mids"],
             [(f, ",".join(n), ",".join(mids[x] for x in n)) for f, n in evaluation])
  refs = {}
  for part, rows in (("dev", dev), ("eval", evaluation)):
    for i, row in enumerate(rows):
      path = root / f"FSD50K.{part}_audio" / f"{row[0]}.wav"
      if noise_samples is None:
        refs[row[0]] = _write_audio(path, seconds=0.06 + 0.01 * i, seed=len(refs))
      else:  # incompressible noise of a chosen size, so `zip -s 64k` makes a known number of parts
        pcm = np.random.default_rng(len(refs)).integers(-32768, 32768, noise_samples[part]).astype(np.int16)
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, pcm, SR, subtype="PCM_16")
        refs[row[0]] = pcm
  return dev, evaluation, refs


def _check_fsd50k(builder, names, dev, evaluation, refs):
  assert builder.class_names == tuple(names)
  assert builder.info.features["label"].names == list(names)
  expected = {"train": [(f, n) for f, n, s in dev if s == "train"],
              "validation": [(f, n) for f, n, s in dev if s == "val"], "test": evaluation}
  assert sorted(builder.info.splits) == sorted(expected)
  for split, rows in expected.items():
    got = _examples(builder, split)
    assert [g["filename"].decode() for g in got] == [f"{f}.wav" for f, _ in rows]
    for ex, (fname, labels) in zip(got, rows):
      np.testing.assert_array_equal(ex["waveform"], refs[fname])
      assert ex["label"] == names.index(labels[0])
      np.testing.assert_array_equal(ex["labels"], [int(n in labels) for n in names])


def test_fsd50k_manual_multi_hot_splits(tmp_path):
  names = ["Bark", "Dog", "Electric_guitar", "Guitar", "Music", "Rain"]
  vocabulary = [(i, n, f"/m/{i:05d}") for i, n in enumerate(names)]
  dev, evaluation, refs = _fsd50k_copy(tmp_path / "FSD50K", vocabulary)
  builder = fsd50k.build_fsd50k(tmp_path / "FSD50K", tmp_path / "tfds", SR)
  _check_fsd50k(builder, names, dev, evaluation, refs)
  assert builder.build_report["num_rows"] == {"train": 3, "validation": 1, "test": 1}


@pytest.fixture(name="fsd50k_split_zips")
def fixture_fsd50k_split_zips(tmp_path):
  """A 200-class FSD50K copy zipped as on Zenodo: ground truth zip, dev audio in 6 parts, eval audio in 2."""
  if shutil.which("zip") is None:
    pytest.skip("Info-ZIP 'zip' is needed to make split archives")
  names = ["Bark", "Dog", "Electric_guitar", "Guitar", "Music"] + [f"Class_{i:03d}" for i in range(5, 200)]
  vocabulary = [(i, n, f"/m/{i:05d}") for i, n in enumerate(names)]
  src = tmp_path / "src"
  # 4 dev clips of 44000 int16 samples (88 kB each) -> 6 parts of 64 KiB; 1 eval clip of 50000 -> 2 parts.
  dev, evaluation, refs = _fsd50k_copy(src, vocabulary, noise_samples={"dev": 44000, "eval": 50000})
  dl = tmp_path / "dl"
  dl.mkdir()
  for part in ("dev", "eval"):
    subprocess.run(["zip", "-q", "-r", "-0", "-s", "64k", str(dl / f"FSD50K.{part}_audio.zip"),
                    f"FSD50K.{part}_audio"], cwd=src, check=True)
  with zipfile.ZipFile(dl / "FSD50K.ground_truth.zip", "w") as z:
    for path in sorted((src / "FSD50K.ground_truth").iterdir()):
      z.write(path, f"FSD50K.ground_truth/{path.name}")
  return names, dev, evaluation, refs, src, dl


def test_open_split_zip_matches_the_files_zip_split(fsd50k_split_zips, monkeypatch):
  _, _, _, _, src, dl = fsd50k_split_zips
  parts = [dl / f"FSD50K.dev_audio.z0{k}" for k in range(1, 6)] + [dl / "FSD50K.dev_audio.zip"]
  assert sorted(p.name for p in dl.glob("FSD50K.dev_audio.*")) == sorted(p.name for p in parts)
  for limit in (0xFFFFFFFF, 0):  # 0: every offset written into a zip64 extra field
    monkeypatch.setattr(fsd50k, "_ZIP64_OFFSET_LIMIT", limit)
    with fsd50k.open_split_zip(parts) as archive:
      members = [m for m in archive.infolist() if not m.is_dir()]
      assert sorted(m.filename for m in members) == sorted(
          f"FSD50K.dev_audio/{p.name}" for p in (src / "FSD50K.dev_audio").iterdir())
      for m in members:
        assert archive.read(m) == (src / m.filename).read_bytes()
  with pytest.raises(zipfile.BadZipFile, match="disk 6 of a split archive, but 1 parts"):
    fsd50k.open_split_zip(parts[-1:])


def test_fsd50k_download_path_calls_dl_manager(fsd50k_split_zips, tmp_path, monkeypatch):
  names, dev, evaluation, refs, _, dl = fsd50k_split_zips
  files = {fsd50k.FSD50K_GROUND_TRUTH_URL: dl / "FSD50K.ground_truth.zip"}
  for urls in fsd50k.FSD50K_AUDIO_URLS.values():
    for url in urls:
      files[url] = dl / url.rsplit("/", 1)[1].split("?")[0]
  fake = FakeDownloadManager(files, tmp_path)
  _use_fake(monkeypatch, fsd50k.Fsd50kBuilder, fake)
  builder = fsd50k.build_fsd50k(None, tmp_path / "tfds", SR)
  (call, resource), second = fake.calls
  assert call == "download_and_extract" and resource.url == fsd50k.FSD50K_GROUND_TRUTH_URL
  assert resource.extract_method == tfds.download.ExtractMethod.ZIP
  assert second == ("download", fsd50k.FSD50K_AUDIO_URLS)
  assert len(fsd50k.FSD50K_AUDIO_URLS["dev"]) == 6 and len(fsd50k.FSD50K_AUDIO_URLS["eval"]) == 2
  _check_fsd50k(builder, names, dev, evaluation, refs)
  # Names chosen after the download are stored with the dataset, and a second call reuses it without downloading.
  assert tfds.builder_from_directory(builder.data_dir).info.features["label"].names == names
  again = fsd50k.build_fsd50k(None, tmp_path / "tfds", SR)
  assert len(fake.calls) == 2 and again.class_names == tuple(names)


# ------------------------------------------------------------------------------------------------ TensorFlow


def test_building_and_reading_never_import_tensorflow(tmp_path):
  _esc50_copy(tmp_path / "esc")
  names = ["Bark", "Dog", "Electric_guitar", "Guitar", "Music"]
  _fsd50k_copy(tmp_path / "fsd", [(i, n, f"/m/{i:05d}") for i, n in enumerate(names)])
  _clotho_copy(tmp_path / "clotho")
  script = textwrap.dedent(f"""
      import sys
      import tensorflow_datasets as tfds
      from data_pipelines.builders import audiocaps, audioset, clotho, esc50, fsd50k
      data_dir = {str(tmp_path / 'tfds')!r}
      esc50.build_esc50({str(tmp_path / 'esc')!r}, data_dir, {SR})
      fsd50k.build_fsd50k({str(tmp_path / 'fsd')!r}, data_dir, {SR})
      c = clotho.build_clotho({str(tmp_path / 'clotho')!r}, data_dir, {SR})
      esc = tfds.data_source("esc50/sr{SR}_int16", data_dir=data_dir, split="fold1+fold2")
      fsd = tfds.data_source("fsd50k/sr{SR}_int16", data_dir=data_dir)["train"]
      caps = tfds.builder_from_directory(c.data_dir).as_data_source("test")[0]["captions"]
      assert len(esc) == 4 and esc[0]["waveform"].size > 0 and fsd[0]["labels"].sum() == 3 and caps.shape == (5,)
      print("TF_IMPORTED", "tensorflow" in sys.modules)
  """)
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=120)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "TF_IMPORTED False" in out.stdout
