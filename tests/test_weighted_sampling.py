"""AudioMAE fine-tuning's data options: roll + gain augmentation and the label-frequency weighted sampler."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from data_pipelines import augment, pretraining
from spine_utils import REPO

sys.path.insert(0, str(REPO))
from configs import audiomae_finetune  # noqa: E402  pylint: disable=wrong-import-position
from uss_jax.tasks import tagging  # noqa: E402  pylint: disable=wrong-import-position


def test_roll_mag_aug_is_a_circular_shift_times_a_beta_gain():
  x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
  out = augment.roll_mag_aug(x, np.random.default_rng(7))
  # The same draws by hand: shift ~ U{0..n-1} first, then gain ~ Beta(10, 10) + 0.5.
  ref_rng = np.random.default_rng(7)
  shift = ref_rng.integers(1000)
  gain = ref_rng.beta(10, 10) + 0.5
  np.testing.assert_allclose(out, np.concatenate([x[-shift:], x[:-shift]]) * gain, rtol=1e-6)
  # The reference's effective behaviour (shift always 0): only the gain.
  out0 = augment.roll_mag_aug(x, np.random.default_rng(7), roll=False)
  np.testing.assert_allclose(out0 / x, np.full(1000, np.random.default_rng(7).beta(10, 10) + 0.5), rtol=1e-5)
  gains = [float(np.max(np.abs(augment.roll_mag_aug(x, np.random.default_rng(s))))) / np.max(np.abs(x))
           for s in range(400)]
  assert 0.5 < min(gains) and max(gains) < 1.5 and abs(np.mean(gains) - 1.0) < 0.02  # Beta(10,10)+0.5: mean 1


def test_label_frequency_weights_match_gen_weight():
  labels = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0], [0, 0, 0]])
  counts = np.array([3, 1, 1])
  lw = 1000.0 / (counts + 0.01)
  expected = [lw[0], lw[0] + lw[1], lw[2], lw[0], 0.0]
  np.testing.assert_allclose(augment.label_frequency_weights(labels), expected, rtol=1e-12)
  with pytest.raises(ValueError, match="clips, classes"):
    augment.label_frequency_weights(np.ones(3))


def test_weighted_epoch_sampler_draws_in_proportion_and_is_a_function_of_the_index():
  w = np.array([1.0, 2.0, 3.0, 0.0, 4.0])
  sampler = pretraining.WeightedEpochSampler(w, epoch_len=20_000, seed=3)
  clips = sampler.epoch(0)
  freq = np.bincount(clips, minlength=5) / clips.size
  np.testing.assert_allclose(freq, w / w.sum(), atol=0.01)  # binomial sd < 0.0035
  assert freq[3] == 0
  # Epoch e is numpy's weighted choice from the generator (seed, e); element n -> epoch n // len, slot n % len.
  ref = np.random.default_rng([3, 1]).choice(5, size=20_000, replace=True, p=w / w.sum())
  np.testing.assert_array_equal(sampler.epoch(1), ref)
  assert sampler.clip(20_000 + 17) == ref[17]
  fresh = pretraining.WeightedEpochSampler(w, epoch_len=20_000, seed=3)
  assert [fresh.clip(n) for n in (5, 40_001, 5)] == [sampler.clip(5), sampler.clip(40_001), sampler.clip(5)]
  # Without replacement: distinct clips, never one of weight 0.
  no_rep = pretraining.WeightedEpochSampler(w, epoch_len=4, seed=0, replacement=False).epoch(0)
  assert sorted(no_rep) == [0, 1, 2, 4]
  with pytest.raises(ValueError, match="without replacement"):
    pretraining.WeightedEpochSampler(w, epoch_len=5, seed=0, replacement=False)
  with pytest.raises(ValueError, match="non-negative"):
    pretraining.WeightedEpochSampler(np.array([1.0, -1.0]), epoch_len=2, seed=0)


def _source(n=12, classes=4):
  rng = np.random.default_rng(0)
  out = []
  for i in range(n):
    c = i % classes if i < n - 2 else 0  # class 0 is the frequent one
    out.append({"waveform": (rng.standard_normal(900) * 1000).astype(np.int16),
                "labels": np.eye(classes, dtype=np.uint8)[c], "label": c})
  return out


def test_pretraining_iterator_with_weights_and_roll_mag_is_exact_per_host_and_resumable():
  source = _source()
  weights = augment.label_frequency_weights(np.stack([e["labels"] for e in source]))

  def make(pi=0, pc=1):
    return pretraining.pretraining_train_iterator(source, clip_samples=600, global_batch=4, seed=5, process_index=pi,
                                                process_count=pc, roll_mag=True, sample_weights=weights,
                                                epoch_len=10)

  one = [next(make()) for _ in range(1)]
  it = make()
  batches = [next(it) for _ in range(6)]
  np.testing.assert_array_equal(one[0]["waveform"], batches[0]["waveform"])
  # Two hosts: rows 0-1 and 2-3 of each global batch.
  a, b = make(0, 2), make(1, 2)
  for full in batches[:3]:
    np.testing.assert_array_equal(np.concatenate([next(a)["waveform"], next(b)["waveform"]]), full["waveform"])
  # Resume mid-stream.
  it2 = make()
  for _ in range(3):
    next(it2)
  state = it2.get_state()
  it3 = make()
  it3.set_state(state)
  np.testing.assert_array_equal(next(it3)["waveform"], batches[3]["waveform"])
  # Each row is some training clip's 600-sample window, circularly shifted and scaled by a gain in (0.5, 1.5).
  sampler = pretraining.WeightedEpochSampler(weights, epoch_len=10, seed=5)
  for n, row in enumerate(np.concatenate([bt["waveform"] for bt in batches])):
    clip = source[sampler.clip(n)]["waveform"].astype(np.float32) / 32768.0
    windows = np.stack([clip[s:s + 600] for s in range(clip.size - 600 + 1)])
    matched = False
    for shift in range(600):
      rolled = np.roll(row, -shift)
      ratio = windows @ rolled / np.maximum((windows * windows).sum(1), 1e-12)
      k = int(np.argmax(ratio))
      if 0.5 < ratio[k] < 1.5 and np.allclose(rolled, ratio[k] * windows[k], atol=1e-5):
        matched = True
        break
    assert matched, n


def test_tagging_task_uses_the_weighted_sampler_and_caches_weights(demo_tfds, tmp_path):
  c = audiomae_finetune.get_config("tiny")
  c.data.tfds_dir = demo_tfds
  c.data.weighted_sampler = True
  c.data.roll_mag_aug = True
  c.train_clips = 32
  c.batch_size = 8
  task = tagging.TaggingTask(c, str(tmp_path))
  task.prepare()
  batch = next(task.train_iterator(0, 1))
  source = tagging.data_source(task.dataset, "train")
  labels = np.stack([np.asarray(source[i]["labels"]) for i in range(len(source))])
  cached = np.load(os.path.join(tmp_path, tagging.SAMPLE_WEIGHTS_FILE))
  np.testing.assert_allclose(cached, augment.label_frequency_weights(labels))
  sampler = pretraining.WeightedEpochSampler(cached, epoch_len=32, seed=c.seed)
  np.testing.assert_array_equal(batch["label"], [int(source[sampler.clip(n)]["label"]) for n in range(8)])
  # A weight file: must hold one weight per train clip; a wrong one names the field and the file.
  bad = tmp_path / "weights.csv"
  np.savetxt(bad, np.ones(3), delimiter=",")
  c2 = audiomae_finetune.get_config("tiny")
  c2.data.weight_csv = str(bad)
  with pytest.raises(ValueError, match="config.data.weight_csv: .*weights.csv"):
    tagging.train_sample_weights(c2, source, str(tmp_path))
  good = tmp_path / "good.csv"
  np.savetxt(good, np.arange(len(source), dtype=float), delimiter=",")
  c2.data.weight_csv = str(good)
  np.testing.assert_array_equal(tagging.train_sample_weights(c2, source, str(tmp_path)), np.arange(len(source)))
