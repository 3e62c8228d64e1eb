"""``benchmarks/heldout_separation.py`` (issues 11 and 15): seed 001's three SDRs and mAP for any separator beside the
trivial rows, recomputed in numpy on a stand-in separator that halves its input; ESC-50 rows read through the
checked ESC-50 plan (class = category, source group = ``src_file``, fold filter)."""

import csv
import os
import sys

from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest

from spine_utils import REPO
from data_pipelines.builders import esc50

sys.path.insert(0, str(REPO))
sys.path.insert(0, os.path.join(str(REPO), "benchmarks"))

import heldout_separation as hs  # noqa: E402

SR = 8000
CLASSES = ["dog", "rain", "siren"]


class _Tagger(nnx.Module):
  """``query(x)['logits']``: a per-class score that is the segment's mean of ``x * sign[c]`` (fixed, known)."""

  def __init__(self):
    self.sign = nnx.Variable(jnp.asarray([1.0, -1.0, 0.5]))

  def query(self, x):
    return {"logits": jnp.mean(x, axis=-1, keepdims=True) * self.sign[...]}


class _HalfSeparator:
  """What ``evaluate_seed001`` uses of ``inference.Separator``; separates by returning half the input."""
  sample_rate = SR

  def __init__(self):
    self.model = _Tagger()

  def query_segments(self, x):
    return np.asarray(x, np.float32).reshape(2, -1)

  def embed_segments(self, segments):
    return np.ones((len(segments), 4), np.float32)

  def separate(self, x, sr, cond):
    assert sr == SR and cond.shape == (4,)
    return 0.5 * np.asarray(x)


def _db(a, b):
  return 10 * np.log10(np.sum(a ** 2, -1) / np.sum(b ** 2, -1))


def test_seed001_rows_equal_the_numpy_definitions():
  rng = np.random.default_rng(0)
  t = rng.standard_normal((6, 400)).astype(np.float32) + 0.2 * np.arange(6)[:, None]  # distinct means: tags differ
  n = rng.standard_normal((6, 400)).astype(np.float32)
  classes = ["dog", "rain", "dog", "siren", "rain", "cat"]  # 'cat' is not a run class: out of the mAP
  out = hs.evaluate_seed001(_HalfSeparator(), t, n, classes, CLASSES)
  mix_half = _db(t, 0.5 * (t + n) - t).mean()
  assert out["system"]["mixture_SDR"] == pytest.approx(mix_half, abs=1e-4)
  assert out["system"]["clean_SDR"] == pytest.approx(20 * np.log10(2), abs=1e-4)  # |t|^2 / |t/2|^2
  assert out["system"]["silence_SDR"] == pytest.approx(20 * np.log10(2), abs=1e-4)  # energy of n over n/2
  assert out["0.5 x input"] == {k: pytest.approx(v, abs=1e-6) for k, v in out["system"].items() if k != "mAP"}
  assert out["input"]["mixture_SDR"] == pytest.approx(_db(t, n).mean(), abs=1e-4)
  assert out["input"]["clean_SDR"] == np.inf and out["input"]["silence_SDR"] == 0.0
  assert np.isnan(out["silence"]["mixture_SDR"])  # RetroCirce skips all-zero estimates
  assert out["silence"]["silence_SDR"] == pytest.approx(
      np.mean(10 * np.log10(np.mean(n.astype(np.float64) ** 2, -1) / 1e-8)), abs=1e-4)
  # mAP over the 5 examples of run classes: numpy AP per class of the stand-in's logits (sigmoid is monotone).
  sign = np.array([1.0, -1.0, 0.5])
  scores = t.mean(-1)[:5, None] * sign
  labels = np.eye(3)[[CLASSES.index(c) for c in classes[:5]]]
  aps = []
  for c in range(3):
    order = np.argsort(-scores[:, c], kind="stable")
    hits = labels[order, c]
    aps.append(np.sum(np.cumsum(hits) / np.arange(1, 6) * hits) / hits.sum())
  assert out["system"]["mAP"] == pytest.approx(np.mean(aps), abs=1e-6)


def _esc50_csv(root):
  meta = root / "ESC-50-master" / "meta"
  meta.mkdir(parents=True)
  rows = [("1-100-A-0.wav", 1, 0, "100"), ("2-101-A-41.wav", 2, 41, "101"), ("5-102-B-10.wav", 5, 10, "102"),
          ("5-102-A-10.wav", 5, 10, "102")]
  with open(meta / "esc50.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
    for name, fold, target, src in rows:
      w.writerow([name, fold, target, esc50.ESC50_CATEGORIES[target], "False", src, name[-7]])


def test_esc50_rows_name_category_source_group_and_path(tmp_path):
  _esc50_csv(tmp_path)
  rows = hs.esc50_rows(str(tmp_path), "5")
  audio = tmp_path / "ESC-50-master" / "audio"
  assert rows == [{"filename": str(audio / n), "class_label": esc50.ESC50_CATEGORIES[10], "source_group": "esc50:102"}
                  for n in ("5-102-B-10.wav", "5-102-A-10.wav")]
  assert [r["class_label"] for r in hs.esc50_rows(str(tmp_path))] == [esc50.ESC50_CATEGORIES[k] for k in (0, 41, 10, 10)]
  with pytest.raises(ValueError, match="folds must be in 1..5"):
    hs.esc50_rows(str(tmp_path), "6")


def test_a_missing_esc50_copy_is_one_usage_line(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    hs.main(["--checkpoint", str(tmp_path), "--esc50", str(tmp_path / "nowhere")])
  err = capsys.readouterr().err.strip().splitlines()[-1]
  assert e.value.code == 2 and "error: --esc50: no meta/esc50.csv in " in err
