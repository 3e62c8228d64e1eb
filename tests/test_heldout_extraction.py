"""TSE data and evaluation facts behind issue 12 (SoundBeam must extract), against numpy references:

* the 2-event mixtures of ``configs/soundbeam.py:cpu``: every target audible, the mixture = background + targets,
  each target's window SNR over the background as drawn, the input SNR and the SNRi / SI-SNRi / failure rate of the
  trivial outputs (silence, mixture, 0.5 x mixture) recomputed in numpy;
* ``benchmarks/heldout_extraction.py``: mixtures only from held-out source groups (the demo corpus CSV read with
  ``csv``), scores as numpy.
"""

import csv
import os
import sys

import numpy as np
import pytest

from spine_utils import REPO
from data_pipelines import extraction
from uss_jax.tasks import tse

sys.path.insert(0, str(REPO))
sys.path.insert(0, os.path.join(str(REPO), "benchmarks"))

EPS = 1.1920929e-07


def np_snr(est, ref):
  return 10 * np.log10((np.sum(ref**2, -1) + EPS) / (np.sum((ref - est)**2, -1) + EPS))


def np_si_snr(est, ref):
  est = est - est.mean(-1, keepdims=True)
  ref = ref - ref.mean(-1, keepdims=True)
  s = ((np.sum(est * ref, -1, keepdims=True) + EPS) / (np.sum(ref**2, -1, keepdims=True) + EPS)) * ref
  return 10 * np.log10((np.sum(s**2, -1) + EPS) / (np.sum((s - est)**2, -1) + EPS))


class _Source:
  """In-memory random-access source: dense noise clips of 4 classes and sparse 'drum' clips (one hit in silence)."""

  def __init__(self, rng):
    self.rows = []
    for c in range(5):
      for _ in range(4):
        n = int(rng.integers(3000, 6000))
        if c == 4:
          x = np.zeros(n, np.float32)
          x[n // 2:n // 2 + 200] = rng.standard_normal(200)  # 200 samples of sound in ~4,500
        else:
          x = (rng.standard_normal(n) * (0.2 + c)).astype(np.float32)
        self.rows.append({"waveform": x, "labels": np.eye(5, dtype=np.uint8)[c]})

  def __len__(self):
    return len(self.rows)

  def __getitem__(self, i):
    return self.rows[i]


def test_two_event_mixtures_match_numpy_statistics():
  sys.path.insert(0, str(REPO))
  from configs import soundbeam  # pylint: disable=import-outside-toplevel
  c = soundbeam.get_config("cpu")
  assert tuple(c.data.num_events) == (2, 2)
  src = _Source(np.random.default_rng(0))
  elements = extraction.TSEElements(src, mixture_samples=4000, num_events=tuple(c.data.num_events),
                                    snr_db=tuple(c.data.snr_db), normalize=False)
  rows = [elements(i, np.random.default_rng([3, i])) for i in range(150)]
  mix = np.stack([r["mixture"] for r in rows]).astype(np.float64)
  tgt = np.stack([r["target"] for r in rows]).astype(np.float64)  # (n, 2, S): both events are targets
  for r, m, t in zip(rows, mix, tgt):
    bg = m - t.sum(0)  # the background bed
    for k in range(2):
      if r["class_id"][k] == 4:  # a sparse clip: the window holds its hit, not silence
        assert np.sum(t[k]**2) > 0
        continue
      support = np.flatnonzero(t[k])
      window = t[k][support[0]:support[-1] + 1]
      measured = 10 * np.log10(np.mean(window**2) / np.mean(bg**2))
      assert measured == pytest.approx(float(r["snr_db"][k]), abs=1e-2)
      assert 5.0 <= r["snr_db"][k] <= 15.0
  ref, m = tgt.reshape(-1, 4000), np.repeat(mix, 2, axis=0)
  rel = 10 * np.log10(np.sum(ref**2, -1) / np.sum(m**2, -1))
  assert rel.min() > -30.0  # no inaudible target (the failure of the first smoke runs: 8.5 % of them)
  assert np.mean(tse.audible_targets(ref, m, -30.0)) == 1.0
  # Trivial outputs (what the task's summary / the benchmark compare against), as numpy.
  from heldout_extraction import scores  # pylint: disable=import-outside-toplevel
  data = {"target": tgt.astype(np.float32), "mixture": mix.astype(np.float32)}
  mix_snr, mix_si = np_snr(m, ref), np_si_snr(m, ref)
  for est, want_snri, want_si, level in ((np.zeros_like(m), -mix_snr, -mix_si, -np.inf),  # silence: SI-SNR 0 dB
                                         (m, 0 * mix_snr, 0 * mix_si, 0.0),
                                         (0.5 * m, np_snr(0.5 * m, ref) - mix_snr, 0 * mix_si, 20 * np.log10(0.5))):
    got = scores(est.reshape(tgt.shape).astype(np.float32), data)
    assert got["level"] == pytest.approx(level, abs=1e-4)
    assert got["SNRi"] == pytest.approx(np.mean(want_snri), abs=2e-3)
    assert got["SI-SNRi"] == pytest.approx(np.mean(want_si), abs=2e-3)
    assert got["FR"] == pytest.approx(100 * np.mean(want_snri < 1.0))
  # Silence's SI-SNRi equals its SNRi up to the mean: both reward a negative input SNR.
  assert np.mean(-mix_si) == pytest.approx(np.mean(-mix_snr), abs=0.5)


def test_heldout_mixtures_come_from_unseen_source_groups(demo_tfds, tmp_path):
  from configs import soundbeam  # pylint: disable=import-outside-toplevel
  from configs import common  # pylint: disable=import-outside-toplevel
  import heldout_extraction  # pylint: disable=import-outside-toplevel
  c = soundbeam.get_config("tiny")
  c.data.tfds_dir = demo_tfds
  task = tse.TSETask(c, str(tmp_path))
  data = heldout_extraction.heldout_mixtures(task, 6, seed=5)
  assert data["mixture"].shape == (6, 8000) and data["target"].shape == (6, 2, 8000)
  with open(common.DEMO_CSV, newline="") as f:
    group_of = {r["filename"]: r.get("source_group") or r["filename"] for r in csv.DictReader(f)}
  names = {s: [bytes(src[i]["filename"]).decode() for i in range(len(src))]
           for s, src in (("train", tse.data_source(task.dataset, "train")),
                          ("test", tse.data_source(task.dataset, "test")))}
  train_groups = {group_of[n] for n in names["train"]}
  test_groups = {group_of[n] for n in names["test"]}
  assert test_groups and not train_groups & test_groups
  got_train, got_test = heldout_extraction.split_groups(task)
  assert {g.decode() for g in got_test} == test_groups and {g.decode() for g in got_train} == train_groups
  # Every target class is a class of some held-out clip.
  test_src = tse.data_source(task.dataset, "test")
  test_classes = {int(np.argmax(test_src[i]["labels"])) for i in range(len(test_src))}
  assert set(data["class_id"].ravel().tolist()) <= test_classes
