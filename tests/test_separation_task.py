"""The query-based separation recipe end to end at test size: a tagging run provides the frozen query net."""

import csv
import os
import pathlib

import jax
import numpy as np
import pytest

from spine_utils import separation_config
from uss_jax import metrics
from uss_jax.train import trainer

# One xdist worker runs every test that needs the session's tagger / separation runs, so they are trained once
# (Makefile: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("spine_runs")


def _separation_config(demo_tfds, tagger_workdir, **kw):
  c = separation_config(demo_tfds, tagger_workdir, **kw)
  c.model.output_init = "reference"  # see conftest.separation_run
  return c


def test_query_net_is_frozen_and_separator_trains(separation_run, tagger_workdir):
  config, workdir, result = separation_run
  state = result["state"]["model"]
  # The query net is exactly the tagger's (restored weights, untouched by the optimizer, BN stats not updated).
  from uss_jax.tasks.separation import load_query_net  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  tagger, _ = load_query_net(tagger_workdir)
  ref = jax.tree.leaves(jax.tree.map(np.asarray, nnx.state(tagger)))
  got = jax.tree.leaves(jax.tree.map(np.asarray, state["query_net"]))
  assert len(ref) == len(got) > 10
  for a, b in zip(ref, got):
    np.testing.assert_array_equal(a, b)
  # The separator's weights (not just its BatchNorm statistics) moved away from their initialisation.
  run = trainer.build_run(config, str(workdir))

  def kernels(tree):
    return [np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree) if "kernel" in jax.tree_util.keystr(p)]

  init, moved = kernels(run.init()["model"]["separator"]), kernels(state["separator"])
  assert len(init) == len(moved) > 10
  assert all(not np.array_equal(a, b) for a, b in zip(init, moved))


def test_evaluation_matches_host_side_sdr_and_writes_artifacts(separation_run):
  config, tmp_path, result = separation_run
  tmp_path = pathlib.Path(tmp_path)
  run = trainer.build_run(config, str(tmp_path))
  metrics_, outputs = trainer.evaluate_state(run, result["state"])
  assert metrics_ == pytest.approx(result["eval"], rel=1e-6)
  # Independent recomputation: USS SDR of the oracle estimates, median per class, mean over classes.
  sdri = metrics.sdr(outputs["est_oracle"], outputs["target"]) - metrics.sdr(outputs["mixture"], outputs["target"])
  by_class = [np.median(sdri[outputs["class_id"] == k]) for k in np.unique(outputs["class_id"])]
  assert metrics_["SDRi_oracle"] == pytest.approx(float(np.mean(by_class)), abs=1e-6)
  # The fixed evaluation set covers every class with test anchors, the mixtures are energy matched (0 dB SDR).
  mix_sdr = metrics.sdr(outputs["mixture"], outputs["target"])
  assert np.mean(np.abs(mix_sdr) < 1e-3) > 0.8  # except pairs where r hit its [0.02, 50] clip
  with open(tmp_path / "eval_step2_per_class.csv", newline="") as f:
    rows = {r["class"]: r for r in csv.DictReader(f)}
  names = run.task.class_names
  for k in np.unique(outputs["class_id"]):
    row = rows[names[int(k)]]
    assert float(row["SDRi_oracle_median_dB"]) == pytest.approx(np.median(sdri[outputs["class_id"] == k]), abs=0.006)
    assert int(row["mixtures"]) == int(np.sum(outputs["class_id"] == k))
  assert os.path.exists(tmp_path / "eval_step2_sdri.png")
  emb = np.load(tmp_path / "class_embeddings.npz")
  assert emb["embeddings"].shape[0] == len(emb["class_names"])


def _numpy_anchor_start(prob: np.ndarray, valid_frames: int, segment_frames: int, hop: int) -> int:
  """bytedance/uss max_area rule on one framewise curve (replicate pad, box mean, first argmax, clamp)."""
  half = segment_frames // 2
  p = prob[:valid_frames]
  padded = np.concatenate([np.full(half, p[0]), p, np.full(half, p[-1])])
  box = np.array([padded[t:t + 2 * half + 1].sum() for t in range(valid_frames)])
  centre = int(np.clip(np.argmax(box), half, max(valid_frames - 1 - half, half)))
  return (centre - half) * hop


def test_online_anchors_cut_and_mix_in_the_step_like_the_offline_rule(demo_tfds, tagger_workdir, tmp_path):
  """data.anchors='online': the batch holds whole clips; the step's segments and mixtures equal a numpy reference
  (the query net on each clip, the reference rule, mixing.mix_pair), and a short run trains."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from data_pipelines import mixing  # pylint: disable=import-outside-toplevel
  from uss_jax.tasks.separation import SeparationTask  # pylint: disable=import-outside-toplevel

  config = _separation_config(demo_tfds, tagger_workdir, total_steps=2, eval_every=0)
  config.data.anchors = "online"
  config.data.normalize = True
  task = SeparationTask(config, str(tmp_path))
  task.prepare()
  batch = next(task.train_iterator(0, 1))
  assert batch["target_clip"].shape == (config.batch_size, int(config.data.clip_seconds * 16000))
  assert np.all(batch["class_id"] != batch["interferer_class_id"])

  model = task.build_model(nnx.Rngs(0))
  nnx.update(model.query_net, nnx.state(task.query_net))
  mixture, target = task.online_pairs(model, {k: jnp.asarray(v) for k, v in batch.items()})

  seg = task.segment_samples
  for b in range(config.batch_size):
    cut = []
    for kind, cls in (("target", batch["class_id"][b]), ("interferer", batch["interferer_class_id"][b])):
      clip = batch[f"{kind}_clip"][b]
      prob = np.asarray(task.query_net(jnp.asarray(clip[None]))["framewise_output"])[0, :, cls]
      valid = min(int(batch[f"{kind}_samples"][b]) // task.frame_hop + task.frame_offset, prob.shape[0])
      start = _numpy_anchor_start(prob, valid, seg // task.frame_hop, task.frame_hop)
      cut.append(mixing.anchor_crop(clip, start, seg))
    ref = mixing.mix_pair(cut[0], cut[1], normalize=True)
    np.testing.assert_allclose(np.asarray(mixture[b]), ref["mixture"], atol=2e-6)
    np.testing.assert_allclose(np.asarray(target[b]), ref["target"], atol=2e-6)

  result = trainer.train_and_evaluate(config, str(tmp_path))
  assert result["step"] == 2 and result["history"] and all(np.isfinite(loss) for _, loss in result["history"])
