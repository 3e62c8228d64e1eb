"""The per-host sharded grain iterator: same global batches for any process count, exact state restore."""

import numpy as np
import pytest

from data_pipelines import pipelines


def _transform(element, rng):
  # A random crop offset drawn per element: shows the rng depends only on the global element index.
  return {"x": np.asarray(element["x"], np.int64), "r": np.asarray(rng.integers(0, 1_000_000))}


SOURCE = [{"x": i} for i in range(23)]


def _take(it, n):
  return [next(it) for _ in range(n)]


def _iterator(process_index, process_count, workers=0):
  return pipelines.host_sharded_train_iterator(SOURCE, _transform, global_batch=8, seed=3,
                                               process_index=process_index, process_count=process_count,
                                               num_workers=workers)


def test_two_hosts_read_disjoint_rows_that_concatenate_to_the_one_host_batch():
  one = _take(_iterator(0, 1), 6)
  h0, h1 = _take(_iterator(0, 2), 6), _take(_iterator(1, 2), 6)
  for b, a0, a1 in zip(one, h0, h1):
    for key in ("x", "r"):
      np.testing.assert_array_equal(b[key], np.concatenate([a0[key], a1[key]]))
    assert not set(a0["x"]) & set(a1["x"])
  # Every element of an epoch appears once in the first 23 global elements (shuffled, no repetition).
  first = np.concatenate([b["x"] for b in one])[:23]
  assert sorted(first.tolist()) == list(range(23))
  assert first.tolist() != list(range(23))


@pytest.mark.parametrize("workers", [0, 1])
def test_state_restore_reproduces_the_next_batches_also_with_workers(workers):
  reference = _take(_iterator(0, 1), 6)  # in-process, uninterrupted
  it = _iterator(0, 1, workers)
  _take(it, 3)
  state = it.get_state()
  it2 = _iterator(0, 1, workers)  # a fresh iterator, as after a restart
  it2.set_state(state)
  for e, g in zip(reference[3:], _take(it2, 3)):
    np.testing.assert_array_equal(e["x"], g["x"])
    np.testing.assert_array_equal(e["r"], g["r"])


def test_eval_batches_cover_every_element_once_with_mask():
  src = [{"x": i} for i in range(10)]
  fn = lambda e: {"x": np.asarray(e["x"])}  # noqa: E731
  rows = [pipelines.host_sharded_eval_batches(src, fn, global_batch=4, process_index=p, process_count=2)
          for p in range(2)]
  seen = []
  for b0, b1 in zip(*rows):
    x = np.concatenate([b0["x"], b1["x"]])
    m = np.concatenate([b0["mask"], b1["mask"]]).astype(bool)
    seen += x[m].tolist()
  assert seen == list(range(10))


def test_crop_or_pad_and_int16_scaling():
  x = np.arange(10, dtype=np.float32)
  np.testing.assert_array_equal(pipelines.crop_or_pad(x, 4), x[:4])
  np.testing.assert_array_equal(pipelines.crop_or_pad(x, 12), np.r_[x, 0, 0])
  crop = pipelines.crop_or_pad(x, 4, np.random.default_rng(0))
  assert crop[0] in x and np.array_equal(crop, np.arange(crop[0], crop[0] + 4))
  np.testing.assert_allclose(pipelines.to_float32(np.array([-32768, 16384], np.int16)), [-1.0, 0.5])
