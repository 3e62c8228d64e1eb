"""Throughput of the task input pipelines (data_pipelines.pipelines) from array_record on local disk.

Usage: python benchmarks/pipeline.py [--batches 60] [--workers 0,1,2] [--only separation,soundfilter,tse,pretraining]
       [--corpus DIR] [--clips 96] [--uncompressed]

Data: the labeled corpus at ``--corpus`` (default $USS_JAX_CORPUS: ``metadata.csv`` with ``wav32k/`` and ``wav16k/``
folders, or audio files beside the CSV), else a synthetic corpus of ``--clips`` 10 s noise-burst clips in 16 classes
with captions, written as WAV and built with ``data_pipelines.builders.labeled_audio.build_labeled_audio`` (int16
array_record) in a temporary folder, at 32 kHz (separation) and 16 kHz (the others). The separation pipeline needs
an AnchorIndex: one row per clip at a random start, the shape of anchor mining's output (mining itself is not timed).

Pipelines and sizes: separation (bytedance/uss: 2 s at 32 kHz, batch 16, Eq. 2 normalisation), soundfilter (2 s at
16 kHz, batch 16), tse (6 s at 16 kHz, 3-4 events, 2 targets + 2 enrollments, batch 8), pretraining (10 s at 16 kHz,
mixup α 10, p 0.5, batch 16). For each, with 0, 1 and 2 grain ``mp_prefetch`` workers, the first batch (start-up,
worker spawn) is timed apart, 8 more batches and a 2 s pause let the prefetch buffers fill (so that work done ahead
is not charged to the timed span), then ``--batches`` batches are timed; CPU time is the process's (all its
threads) plus its live child processes' (read from /proc), so "mixtures per CPU-second" is mixtures per second per
busy core whatever the number of threads and workers (grain's thread pool: 4 threads in-process, 1 per worker). A
last row per pipeline times the element function in a plain single-threaded loop (no grain). ``--uncompressed``
rewrites the shards without compression first (tfds writes zstd-compressed array_record; reading them dominates the
separation pipeline's cost).
Times depend on the machine and its load; nothing is asserted.
"""

from __future__ import annotations

import argparse
import csv
import gc
import glob
import os
import shutil
import tempfile
import time

from absl import flags
import numpy as np
import soundfile as sf

from data_pipelines import extraction, pipelines, pretraining
from data_pipelines.anchors import AnchorIndex
from data_pipelines.builders import labeled_audio

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _children_cpu_seconds() -> float:
  """utime + stime of the live child processes (/proc; 0 where unavailable)."""
  me, total = os.getpid(), 0.0
  try:
    pids = [p for p in os.listdir("/proc") if p.isdigit()]
  except OSError:
    return 0.0
  for pid in pids:
    try:
      with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
      continue
    if int(fields[1]) == me:  # ppid
      total += (int(fields[11]) + int(fields[12])) / _TICKS
  return total


def _cpu_seconds() -> float:
  t = os.times()
  return t.user + t.system + _children_cpu_seconds()


def _synthetic_corpus(folder: str, clips: int, classes: int = 16, seconds: float = 10.0, sr: int = 32000) -> str:
  """Noise bursts with class-dependent spectra; returns the CSV path."""
  rng = np.random.default_rng(0)
  rows = []
  n = int(seconds * sr)
  for i in range(clips):
    c = i % classes
    x = rng.standard_normal(n).astype(np.float32)
    x = np.convolve(x, np.ones(2 + c) / (2 + c), mode="same")  # class-dependent low-pass
    env = np.repeat(rng.random(int(seconds * 4)) > 0.5, n // int(seconds * 4))
    x[:env.size] *= 0.2 + env
    x = (0.5 * x / np.abs(x).max()).astype(np.float32)
    name = f"clip{i:04d}.wav"
    sf.write(os.path.join(folder, name), x, sr, subtype="PCM_16")
    rows.append({"filename": name, "class_label": f"class{c:02d}", "caption": f"noise of class {c}",
                 "split": "train"})
  path = os.path.join(folder, "metadata.csv")
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  return path


def _build(audio_dir: str, csv_path: str, data_dir: str, sr: int):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  builder = labeled_audio.build_labeled_audio(audio_dir=audio_dir, csv_path=csv_path, data_dir=data_dir,
                                              sample_rate=sr, holdout_fraction=0.0, num_workers=2)
  # A source opened from the directory pickles into grain worker processes (the builder's own class does not).
  return tfds.builder_from_directory(os.fspath(builder.data_dir)).as_data_source("train")


def _rewrite_uncompressed(source) -> None:
  """Rewrites the dataset's array_record shards without compression (tfds writes ``group_size:1``, i.e. zstd)."""
  # pylint: disable-next=import-outside-toplevel
  from array_record.python import array_record_data_source, array_record_module

  for path in glob.glob(os.path.join(_dataset_dir(source), "*.array_record*")):
    reader = array_record_data_source.ArrayRecordDataSource([path])
    records = [reader[i] for i in range(len(reader))]
    writer = array_record_module.ArrayRecordWriter(path, "group_size:1,uncompressed")
    for record in records:
      writer.write(record)
    writer.close()


def _dataset_dir(source) -> str:
  """The folder of a tfds array_record data source's shards."""
  return os.path.dirname(source.data_source._paths[0])  # pylint: disable=protected-access


def _reopen(source):
  """A fresh data source over the same (rewritten) files."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  return tfds.builder_from_directory(_dataset_dir(source)).as_data_source("train")


def _anchor_index(source, segment: int, sr: int) -> AnchorIndex:
  rng = np.random.default_rng(0)
  elements = [source[i] for i in range(len(source))]
  lengths = np.array([e["waveform"].size for e in elements])
  return AnchorIndex(clip=np.arange(len(source)), label=np.array([e["label"] for e in elements]),
                     start=(rng.random(len(source)) * np.maximum(lengths - segment, 0)).astype(np.int64),
                     score=np.ones(len(source), np.float32), segment_samples=segment, sample_rate=sr)


def _time_iterator(make, batches: int, warmup: int = 8, settle: float = 2.0) -> tuple[float, float, float, int]:
  """(start-up s, wall s, CPU s, batch size) over ``batches`` batches after the first ``1 + warmup``."""
  t0 = time.perf_counter()
  it = make()
  first = next(it)
  startup = time.perf_counter() - t0
  size = len(next(iter(first.values())))
  for _ in range(warmup):
    next(it)
  time.sleep(settle)  # let the prefetch buffers fill: the timed span starts and ends with full buffers
  cpu0, t1 = _cpu_seconds(), time.perf_counter()
  for _ in range(batches):
    next(it)
  wall, cpu = time.perf_counter() - t1, _cpu_seconds() - cpu0
  if hasattr(it, "close"):
    it.close()
  del it, first
  gc.collect()
  return startup, wall, cpu, size


def _time_loop(fn, count: int) -> tuple[float, float]:
  fn(0)
  cpu0, t0 = _cpu_seconds(), time.perf_counter()
  for i in range(1, count + 1):
    fn(i)
  return time.perf_counter() - t0, _cpu_seconds() - cpu0


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batches", type=int, default=60, help="timed batches (at least 3x the prefetch buffer)")
  p.add_argument("--workers", default="0,1,2")
  p.add_argument("--only", default="separation,soundfilter,tse,pretraining")
  p.add_argument("--corpus", default=os.environ.get("USS_JAX_CORPUS"))
  p.add_argument("--clips", type=int, default=96)
  p.add_argument("--uncompressed", action="store_true",
                 help="rewrite the built shards without compression before timing (what a builder could write)")
  args = p.parse_args()
  flags.FLAGS.mark_as_parsed()  # grain's mp_prefetch reads absl flags
  workers = [int(w) for w in args.workers.split(",")]
  # The timed span starts and ends with full prefetch buffers; it must be long against them.
  batches = max(args.batches, 3 * pipelines.PREFETCH_BATCHES)
  only = args.only.split(",")

  tmp = tempfile.mkdtemp(prefix="pipeline_bench_")
  try:
    if args.corpus:
      csv_path = os.path.join(args.corpus, "metadata.csv")
      dirs = {sr: os.path.join(args.corpus, f"wav{sr // 1000}k") for sr in (32000, 16000)}
      dirs = {sr: d if os.path.isdir(d) else args.corpus for sr, d in dirs.items()}
      what = f"corpus {args.corpus}"
    else:
      audio = os.path.join(tmp, "audio")
      os.makedirs(audio)
      csv_path = _synthetic_corpus(audio, args.clips)
      dirs = {32000: audio, 16000: audio}
      what = f"synthetic corpus, {args.clips} clips of 10 s"
    t = time.perf_counter()
    src32 = _build(dirs[32000], csv_path, os.path.join(tmp, "tfds32"), 32000)
    src16 = _build(dirs[16000], csv_path, os.path.join(tmp, "tfds16"), 16000)
    if args.uncompressed:
      _rewrite_uncompressed(src32)
      _rewrite_uncompressed(src16)
      src32, src16 = _reopen(src32), _reopen(src16)
    print(f"# data: {what}; array_record ({'uncompressed' if args.uncompressed else 'tfds default: zstd'}) in {tmp} "
          f"({len(src32)} clips, built in {time.perf_counter() - t:.1f} s); {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}")

    sep_index = _anchor_index(src32, 64000, 32000)
    common = dict(seed=0, process_index=0, process_count=1)
    makers = {
        "separation": (lambda w: pipelines.separation_train_iterator(
            src32, sep_index, segment_samples=64000, global_batch=16, num_workers=w, **common),
            pipelines.SeparationElements(src32, sep_index, segment_samples=64000, seed=0)),
        "soundfilter": (lambda w: extraction.soundfilter_train_iterator(
            src16, crop_samples=32000, global_batch=16, num_workers=w, **common),
            extraction.SoundFilterTransform(src16, crop_samples=32000)),
        "tse": (lambda w: extraction.tse_train_iterator(
            src16, mixture_samples=96000, global_batch=8, num_workers=w, **common),
            extraction.TSEElements(src16, mixture_samples=96000)),
        "pretraining": (lambda w: pretraining.pretraining_train_iterator(
            src16, clip_samples=160000, global_batch=16, num_workers=w, mixup_alpha=10.0, mixup_prob=0.5, **common),
            pretraining.PretrainingTransform(src16, clip_samples=160000, mixup_alpha=10.0, mixup_prob=0.5)),
    }
    header = (f"{'pipeline':<12} {'workers':>7} {'start-up s':>10} {'mixtures/s':>11} {'CPU cores busy':>14} "
              f"{'mixtures/CPU-s':>14}")
    print(header)
    print("-" * len(header))
    for name in only:
      make, element = makers[name]
      for w in workers:
        startup, wall, cpu, size = _time_iterator(lambda: make(w), batches)  # pylint: disable=cell-var-from-loop
        n = batches * size
        print(f"{name:<12} {w:>7} {startup:>10.2f} {n / wall:>11.0f} {cpu / wall:>14.2f} {n / max(cpu, 1e-9):>14.0f}")
      count = batches * 8
      rng = np.random.default_rng(0)
      by_clip = name in ("soundfilter", "pretraining")  # these elements take a clip index
      fn = lambda i: element(i % len(src16) if by_clip else i, rng)  # pylint: disable=cell-var-from-loop
      wall, cpu = _time_loop(fn, count)
      print(f"{name:<12} {'loop':>7} {'':>10} {count / wall:>11.0f} {cpu / wall:>14.2f} "
            f"{count / max(cpu, 1e-9):>14.0f}")
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  main()
