"""The query-based separation recipe end to end at test size: a tagging run provides the frozen query net."""

import os

import jax
import numpy as np
import pytest

from spine_utils import tiny_config
from uss_jax import metrics
from uss_jax.train import trainer


@pytest.fixture(scope="module")
def tagger_workdir(demo_tfds, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("tagger"))
  trainer.train_and_evaluate(tiny_config(demo_tfds, total_steps=2, checkpoint_every=2), workdir)
  return workdir


def _separation_config(demo_tfds, tagger_workdir, **kw):
  import sys
  from spine_utils import REPO
  sys.path.insert(0, str(REPO))
  from configs import uss_resunet30  # pylint: disable=import-outside-toplevel
  c = uss_resunet30.get_config("tiny")
  c.data.tfds_dir = demo_tfds
  c.query.workdir = tagger_workdir
  # The reference initialisation: with output_init='identity' (the small recipes) after_conv starts at zero, so in
  # 2 warm-up steps only after_conv receives gradients, and the test below checks that every kernel trains.
  c.model.output_init = "reference"
  for k, v in kw.items():
    setattr(c, k, v)
  return c


@pytest.fixture(scope="module")
def separation_run(demo_tfds, tagger_workdir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("separation")
  config = _separation_config(demo_tfds, tagger_workdir, total_steps=2, eval_every=2)
  return config, workdir, trainer.train_and_evaluate(config, str(workdir))


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
  assert os.path.exists(tmp_path / "eval_step2_per_class.csv")
  assert os.path.exists(tmp_path / "eval_step2_sdri.png")
  emb = np.load(tmp_path / "class_embeddings.npz")
  assert emb["embeddings"].shape[0] == len(emb["class_names"])
