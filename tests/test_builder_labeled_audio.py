"""Tests of data_pipelines.audio_io and the folder+CSV TFDS builder (data_pipelines/builders/labeled_audio.py).

References: soundfile reads of the source files (bit-exact for int16 at the native rate), librosa's soxr_hq and
scipy's resample_poly (an independent polyphase resampler) for resampled builds, the CSV itself for labels.
"""

import csv
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import zlib

import librosa
import numpy as np
import pytest
import scipy.signal
import soundfile as sf

from data_pipelines import audio_io
from data_pipelines.builders import labeled_audio
from data_pipelines.builders.labeled_audio import build_labeled_audio, stratified_group_holdout

REPO = pathlib.Path(__file__).resolve().parents[1]


def _tone(seconds, sr, freq=440.0, amp=0.5, channels=1, seed=0):
  t = np.arange(int(seconds * sr)) / sr
  rng = np.random.default_rng(seed)
  x = amp * np.sin(2 * np.pi * freq * t)[:, None] + 0.05 * rng.standard_normal((t.size, channels))
  return (x if channels > 1 else x[:, 0]).astype(np.float32)


def _read_csv(path):
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


def _band_snr_db(estimate, reference, sr, max_hz, trim):
  """SNR in dB of `estimate` against `reference` within 0..max_hz, edges of `trim` samples dropped."""
  def lowpass(x):
    spectrum = np.fft.rfft(x)
    spectrum[np.fft.rfftfreq(x.size, 1 / sr) > max_hz] = 0
    return np.fft.irfft(spectrum, x.size)[trim:-trim]
  ref = lowpass(reference.astype(np.float64))
  err = lowpass(estimate.astype(np.float64) - reference.astype(np.float64))
  return 10 * np.log10(np.sum(ref**2) / np.sum(err**2))


# ----------------------------------------------------------------------------------------------------- audio_io


def test_load_audio_mono_mix_and_resample_match_references(tmp_path):
  stereo = _tone(1.0, 44100, channels=2)
  path = tmp_path / "stereo.wav"
  sf.write(path, stereo, 44100, subtype="FLOAT")
  got = audio_io.load_audio(path, 16000)
  mono = stereo.mean(axis=1)
  ref = librosa.resample(mono, orig_sr=44100, target_sr=16000, res_type="soxr_hq")
  assert got.dtype == np.float32 and got.shape == ref.shape
  np.testing.assert_allclose(got, ref, atol=1e-6)
  # Independent polyphase resampler: agrees within the common passband (0..7 kHz).
  poly = scipy.signal.resample_poly(mono.astype(np.float64), 160, 441)
  assert _band_snr_db(got, poly, 16000, 7000, trim=200) > 40
  # mono=False keeps the channels, native rate untouched.
  both = audio_io.load_audio(path, None, mono=False)
  np.testing.assert_array_equal(both, stereo)


def test_flac_int16_round_trip_is_exact(tmp_path):
  pcm = (np.random.default_rng(1).integers(-32768, 32768, 4000)).astype(np.int16)
  path = tmp_path / "x.flac"
  audio_io.save_audio(path, pcm, 16000)
  x = audio_io.load_audio(path, 16000)
  np.testing.assert_array_equal(x, pcm.astype(np.float32) / 32768)
  np.testing.assert_array_equal(audio_io.to_int16(x), pcm)
  np.testing.assert_array_equal(audio_io.to_int16(np.array([1.5, -2.0, 0.5])), [32767, -32768, 16384])


def _write_bad_files(folder: pathlib.Path) -> dict[str, str]:
  """Broken files -> the reason kind load_audio must give."""
  good = folder / "_good.wav"
  sf.write(good, _tone(0.5, 16000), 16000, subtype="PCM_16")
  data = good.read_bytes()
  (folder / "empty.wav").write_bytes(b"")
  (folder / "text.wav").write_text("this is not audio\n" * 20)
  (folder / "trunc.wav").write_bytes(data[: len(data) // 2])
  flac = folder / "_good.flac"
  sf.write(flac, _tone(0.5, 16000), 16000)
  (folder / "trunc.flac").write_bytes(flac.read_bytes()[: len(flac.read_bytes()) * 2 // 3])
  return {"empty.wav": "empty file", "text.wav": "not a readable audio file", "trunc.wav": "truncated",
          "trunc.flac": "decoding failed", "missing.wav": "file not found"}


def test_load_audio_errors(tmp_path):
  expected = _write_bad_files(tmp_path)
  for name, reason in expected.items():
    with pytest.raises(audio_io.AudioLoadError) as info:
      audio_io.load_audio(tmp_path / name, 16000)
    assert info.value.path == str(tmp_path / name)
    assert info.value.reason.startswith(reason), (name, info.value.reason)
  # A cut WAV is still readable on request: the frames that are there, unchanged.
  part = audio_io.load_audio(tmp_path / "trunc.wav", None, allow_truncated=True)
  full = audio_io.load_audio(tmp_path / "_good.wav", None)
  np.testing.assert_array_equal(part, full[: part.size])


# --------------------------------------------------------------------------------------------- split assignment


def test_stratified_group_holdout_properties():
  rng = np.random.default_rng(0)
  groups, labels = [], []
  for c in range(6):
    for g in range(1 + c):  # class c has c + 1 groups of 1..4 clips
      for _ in range(rng.integers(1, 5)):
        groups.append(f"class{c}-group{g}")
        labels.append(c)
  held = stratified_group_holdout(groups, labels, 0.3, seed=0)
  assert held == stratified_group_holdout(list(reversed(groups)), list(reversed(labels)), 0.3, seed=0)
  for c in range(6):
    class_groups = sorted({g for g, l in zip(groups, labels) if l == c})
    n_held = sum(g in held for g in class_groups)
    if len(class_groups) == 1:
      assert n_held == 0
      continue
    assert 1 <= n_held <= len(class_groups) - 1
    # Held-out groups are a prefix of the crc32 order, of the size closest to 30 % of the clips.
    order = sorted(class_groups, key=lambda g: (zlib.crc32(f"0:{g}".encode()), g))
    sizes = [groups.count(g) for g in order]
    best = min(range(1, len(order)), key=lambda k: (abs(sum(sizes[:k]) - 0.3 * sum(sizes)), k))
    assert set(order[:best]) == {g for g in class_groups if g in held}
  assert stratified_group_holdout(groups, labels, 0.0) == set()


# ----------------------------------------------------------------------------------------------- real corpus


@pytest.fixture(scope="session")
def corpus_16k_int16(corpus_dir, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds16")
  return build_labeled_audio(corpus_dir / "wav16k", corpus_dir / "metadata.csv", data_dir, 16000,
                             name="uss_corpus", dtype="int16")


def test_corpus_int16_native_rate_is_exact(corpus_dir, corpus_16k_int16):
  builder = corpus_16k_int16
  rows = _read_csv(corpus_dir / "metadata.csv")
  by_name = {r["filename"]: r for r in rows}
  index_names = {int(r["class_index"]): r["class_label"] for r in rows}
  assert builder.class_names == tuple(index_names[i] for i in range(len(index_names)))
  seen = []
  for split in ("train", "test"):
    source = builder.as_data_source(split)
    names = []
    for i in range(len(source)):
      ex = source[i]
      name = ex["filename"].decode()
      row = by_name[name]
      ref, sr = sf.read(corpus_dir / "wav16k" / name, dtype="int16")
      assert sr == 16000 and ex["waveform"].dtype == np.int16
      np.testing.assert_array_equal(ex["waveform"], ref)
      assert ex["label"] == int(row["class_index"])
      np.testing.assert_array_equal(ex["labels"], np.eye(25, dtype=np.uint8)[int(row["class_index"])])
      assert ex["caption"].decode() == row["caption"] and ex["group"].decode() == row["source_group"]
      names.append(name)
    # CSV order is kept within a split.
    assert names == [r["filename"] for r in rows if r["filename"] in set(names)]
    seen += names
  assert sorted(seen) == sorted(by_name)
  report = builder.build_report
  assert report["num_skipped"] == 0 and report["split_source"] == "holdout"
  assert report["num_examples"] == {"train": len(builder.as_data_source("train")),
                                    "test": len(builder.as_data_source("test"))}


def test_corpus_holdout_is_group_disjoint_and_stratified(corpus_dir, corpus_16k_int16):
  builder = corpus_16k_int16
  groups = {s: {builder.as_data_source(s)[i]["group"] for i in range(len(builder.as_data_source(s)))}
            for s in ("train", "test")}
  assert not groups["train"] & groups["test"]
  rows = _read_csv(corpus_dir / "metadata.csv")
  test_share = len(builder.as_data_source("test")) / len(rows)
  assert 0.1 < test_share < 0.3  # holdout_fraction 0.2, whole groups
  test_groups = {g.decode() for g in groups["test"]}
  for label in {r["class_label"] for r in rows}:
    class_groups = {r["source_group"] for r in rows if r["class_label"] == label}
    if len(class_groups) >= 2:
      assert class_groups & test_groups, label
      assert class_groups - test_groups, label


def test_corpus_rebuild_is_a_no_op(corpus_dir, corpus_16k_int16):
  files = sorted(pathlib.Path(corpus_16k_int16.data_dir).iterdir())
  stamps = [f.stat().st_mtime_ns for f in files]
  again = build_labeled_audio(corpus_dir / "wav16k", corpus_dir / "metadata.csv",
                              corpus_16k_int16.data_dir_root, 16000, name="uss_corpus", dtype="int16")
  assert again.data_dir == corpus_16k_int16.data_dir
  assert [f.stat().st_mtime_ns for f in sorted(pathlib.Path(again.data_dir).iterdir())] == stamps
  assert len(again.as_data_source("test")) == len(corpus_16k_int16.as_data_source("test"))
  # Other options into the same folder: refused unless overwrite=True.
  with pytest.raises(ValueError, match="other options"):
    build_labeled_audio(corpus_dir / "wav16k", corpus_dir / "metadata.csv", corpus_16k_int16.data_dir_root,
                        16000, name="uss_corpus", dtype="int16", holdout_fraction=0.3)


def test_corpus_resampled_float32_matches_independent_resamplers(corpus_dir, tmp_path):
  rows = _read_csv(corpus_dir / "metadata.csv")
  builder = build_labeled_audio(corpus_dir / "wav32k", corpus_dir / "metadata.csv", tmp_path / "tfds", 16000,
                                name="corpus32", dtype="float32", max_duration_s=3.0)
  worst_soxr, worst_snr = 0.0, np.inf
  count = 0
  for split in builder.info.splits:
    source = builder.as_data_source(split)
    for i in range(len(source)):
      ex = source[i]
      x32, sr = sf.read(corpus_dir / "wav32k" / ex["filename"].decode(), dtype="float32")
      assert sr == 32000 and ex["waveform"].dtype == np.float32
      ref = librosa.resample(x32, orig_sr=32000, target_sr=16000, res_type="soxr_hq")[:48000]
      np.testing.assert_array_equal(ex["waveform"].shape, ref.shape)
      worst_soxr = max(worst_soxr, np.abs(ex["waveform"] - ref).max())
      poly = scipy.signal.resample_poly(x32.astype(np.float64), 1, 2)[:48000]
      worst_snr = min(worst_snr, _band_snr_db(ex["waveform"], poly, 16000, 7000, trim=200))
      count += 1
  assert count == len(rows)
  assert worst_soxr < 1e-6  # measured 0.0
  assert worst_snr > 40  # measured >= 50 dB on the corpus


# ------------------------------------------------------------------------------------- synthetic folder + CSV


def _synthetic(tmp_path):
  audio = tmp_path / "audio"
  audio.mkdir()
  bad = _write_bad_files(audio)
  clips = {
      "a1.wav": _tone(0.5, 16000, 300, seed=1),
      "a2.flac": _tone(0.6, 16000, 500, seed=2),
      "b1.flac": _tone(0.4, 16000, 700, seed=3),
      "b2.wav": _tone(0.3, 16000, 900, seed=4),
      "c1.wav": _tone(0.2, 16000, 1100, seed=5),
  }
  for name, x in clips.items():
    sf.write(audio / name, x, 16000, subtype="PCM_16")
  rows = [("a1.wav", "alpha;beta", "one", "g1"), ("a2.flac", "alpha", "two", "g2"),
          ("b1.flac", "beta;gamma;alpha", "three", "g3"), ("b2.wav", "beta", "", "g4"),
          ("c1.wav", "gamma", "five", "g5"), ("nolabel.wav", "", "x", "g6")]
  rows += [(name, "gamma", "bad", f"bad-{name}") for name in bad]
  csv_path = tmp_path / "meta.csv"
  with open(csv_path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["filename", "labels", "caption", "source_group"])
    writer.writerows(rows)
  return audio, csv_path, rows, bad


def test_synthetic_multilabel_flac_and_bad_files(tmp_path):
  audio, csv_path, rows, bad = _synthetic(tmp_path)
  builder = build_labeled_audio(audio, csv_path, tmp_path / "tfds", 16000, name="synthetic", holdout_fraction=0.0,
                                num_workers=2)
  assert builder.class_names == ("alpha", "beta", "gamma")
  source = builder.as_data_source("train")
  assert len(source) == 5
  for i, (name, labels, caption, group) in enumerate(rows[:5]):
    ex = source[i]
    assert ex["filename"].decode() == name and ex["caption"].decode() == caption and ex["group"].decode() == group
    names = labels.split(";")
    assert ex["label"] == builder.class_names.index(names[0])
    np.testing.assert_array_equal(ex["labels"], [int(c in names) for c in builder.class_names])
    ref, _ = sf.read(audio / name, dtype="int16")
    np.testing.assert_array_equal(ex["waveform"], ref)  # FLAC and WAV, bit-exact
  report = json.loads((pathlib.Path(builder.data_dir) / "build_report.json").read_text())
  assert report["num_skipped"] == len(bad) + 1
  reasons = {s["filename"]: s["reason"] for s in report["skipped"]}
  assert set(reasons) == set(bad) | {"nolabel.wav"}
  for name, kind in bad.items():
    assert reasons[name].startswith(kind), (name, reasons[name])
  assert report["skipped_by_reason"] == {"empty file": 1, "not a readable audio file": 1, "truncated": 1,
                                         "decoding failed": 1, "file not found": 1, "no label": 1}


def test_csv_split_and_fold_columns(tmp_path):
  audio = tmp_path / "audio"
  audio.mkdir()
  rows = []
  for i in range(6):
    sf.write(audio / f"{i}.wav", _tone(0.1, 8000, 200 + 100 * i, seed=i), 8000, subtype="PCM_16")
    rows.append((f"{i}.wav", "ab"[i % 2], ["train", "Valid", "test"][i % 3], 1 + i % 3))
  def write(split_values):
    path = tmp_path / "meta.csv"
    with open(path, "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(["filename", "class_label", "split", "fold"])
      writer.writerows([(n, c, s, fold) for (n, c, _, fold), s in zip(rows, split_values)])
    return path
  path = write([r[2] for r in rows])
  builder = build_labeled_audio(audio, path, tmp_path / "d1", 16000, dtype="float32")
  for split, want in (("train", ["0.wav", "3.wav"]), ("validation", ["1.wav", "4.wav"]), ("test", ["2.wav", "5.wav"])):
    source = builder.as_data_source(split)
    assert [source[i]["filename"].decode() for i in range(len(source))] == want
  ex = builder.as_data_source("train")[1]
  ref = librosa.resample(sf.read(audio / "3.wav", dtype="float32")[0], orig_sr=8000, target_sr=16000,
                         res_type="soxr_hq")
  np.testing.assert_allclose(ex["waveform"], ref, atol=1e-6)  # upsampled 8 -> 16 kHz
  # Folds take precedence over the split column.
  builder = build_labeled_audio(audio, path, tmp_path / "d2", 8000, holdout_folds=(3,))
  test = builder.as_data_source("test")
  assert [test[i]["filename"].decode() for i in range(len(test))] == ["2.wav", "5.wav"]
  assert len(builder.as_data_source("train")) == 4
  # A split column mixing known and unknown values is an error naming the column.
  path = write(["train", "dev", "test", "train", "dev", "test"])
  with pytest.raises(ValueError, match="'split' mixes"):
    build_labeled_audio(audio, path, tmp_path / "d3", 8000)


def test_clear_errors(tmp_path):
  audio, csv_path, _, _ = _synthetic(tmp_path)
  with pytest.raises(FileNotFoundError, match="nowhere"):
    build_labeled_audio(tmp_path / "nowhere", csv_path, tmp_path / "tfds", 16000)
  with pytest.raises(FileNotFoundError, match="absent.csv"):
    build_labeled_audio(audio, tmp_path / "absent.csv", tmp_path / "tfds", 16000)
  for header, column in (("name,labels\n", "filename"), ("filename,tags\n", "class_label")):
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text(header + "a1.wav,alpha\n")
    with pytest.raises(ValueError, match=column) as info:
      build_labeled_audio(audio, bad_csv, tmp_path / "tfds", 16000)
    assert str(bad_csv) in str(info.value)
  with pytest.raises(ValueError, match="'speaker'"):
    build_labeled_audio(audio, csv_path, tmp_path / "tfds", 16000, group_column="speaker")
  with pytest.raises(ValueError, match="not in class_names"):
    build_labeled_audio(audio, csv_path, tmp_path / "tfds", 16000, class_names=("alpha", "beta"))
  only_bad = tmp_path / "only_bad.csv"
  only_bad.write_text("filename,class_label,split\na1.wav,x,train\nempty.wav,x,test\n")
  with pytest.raises(ValueError, match=r"no readable audio in split\(s\) \['test'\]"):
    build_labeled_audio(audio, only_bad, tmp_path / "tfds", 16000)


def test_build_and_read_never_import_tensorflow(tmp_path):
  audio, csv_path, _, _ = _synthetic(tmp_path)
  script = textwrap.dedent(f"""
      import sys
      import numpy as np
      import tensorflow_datasets as tfds
      from data_pipelines.builders import build_labeled_audio
      b = build_labeled_audio({str(audio)!r}, {str(csv_path)!r}, {str(tmp_path / 'tfds')!r}, 16000, name="no_tf")
      total = sum(int(np.sum(b.as_data_source(s)[i]["waveform"] != 0))
                  for s in b.info.splits for i in range(len(b.as_data_source(s))))
      read = tfds.data_source("no_tf/sr16000_int16", data_dir={str(tmp_path / 'tfds')!r})
      again = tfds.builder_from_directory(b.data_dir).as_data_source("train")[0]["waveform"]
      assert total > 0 and len(read["train"]) == len(b.as_data_source("train")) and again.size > 0
      print("TF_IMPORTED", "tensorflow" in sys.modules)
  """)
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=120)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "TF_IMPORTED False" in out.stdout
