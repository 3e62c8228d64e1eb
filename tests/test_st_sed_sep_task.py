"""ST-SED-SEP through the joint_separation task and Table 2's switches: "Init" copies the HTS-AT tagging run into
the query net (values equal to the tagger's), "Grad" off keeps it frozen through training, the run separates by audio
query; CaRE-SEP without grad and with a separate query encoder trains everything but that encoder."""

from __future__ import annotations

from flax import nnx
import jax
import numpy as np
import pytest

from spine_utils import REPO
from test_care_sep_task import _config, _task_and_model
from uss_jax import inference
from uss_jax.tasks import get_task
from uss_jax.train import checkpoint as checkpoint_lib
from uss_jax.train import trainer

# The session's HTS-AT run (htsat_run) is trained once: every test of this file on one xdist worker (Makefile:
# --dist loadgroup).
pytestmark = pytest.mark.xdist_group("htsat_run")


def _get(tree, path):
  for k in path:
    tree = tree[k] if k in tree else tree[str(k)]
  return np.asarray(tree)


@pytest.fixture(scope="session")
def htsat_run(demo_tfds, tmp_path_factory):
  """configs/sed_htsat.py:tiny, 2 steps: the "Init" tagging run."""
  import sys  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, str(REPO))
  from configs import sed_htsat  # pylint: disable=import-outside-toplevel
  c = sed_htsat.get_config("tiny")
  c.data.tfds_dir, c.total_steps, c.checkpoint_every = demo_tfds, 2, 2
  workdir = str(tmp_path_factory.mktemp("htsat"))
  trainer.train_and_evaluate(c, workdir)
  return workdir


def test_st_sed_sep_init_copies_the_tagger_and_grad_off_keeps_it_frozen(demo_tfds, tagger_workdir, htsat_run,
                                                                        tmp_path):
  c = _config("st_sed_sep", demo_tfds, tagger_workdir, **{"ablation.init": True, "init.workdir": htsat_run,
                                                            "total_steps": 2, "eval_every": 2})
  workdir = str(tmp_path / "stsed")
  result = trainer.train_and_evaluate(c, workdir)
  assert np.isfinite(result["eval"]["mixture_SDR"]) and np.isfinite(result["eval"]["silence_SDR"])
  tagger, _, _ = checkpoint_lib.restore_run_model(htsat_run)
  trained, _, _ = checkpoint_lib.restore_run_model(workdir)
  q = trained["query_net"]
  for path in (("layers", 0, "blocks", 0, "attn", "qkv", "kernel"), ("layers", 1, "downsample", "reduction", "kernel"),
               ("tscam_conv", "kernel"), ("patch_embed", "proj", "kernel")):
    np.testing.assert_array_equal(_get(q, path), _get(tagger, path))  # copied by Init, frozen by grad off
  sep = inference.Separator.from_workdir(workdir)
  assert sep.info.name == "st_sed_sep"
  x = 0.1 * np.random.default_rng(2).standard_normal(2 * 16000).astype(np.float32)
  cond, _ = sep.condition(audio=x)
  y = sep.separate(x, 16000, cond)
  assert y.shape == x.shape and np.all(np.isfinite(y))


def test_care_sep_without_grad_and_shared_encoder_freezes_the_query_encoder(demo_tfds, tagger_workdir, tmp_path):
  c = _config("care_sep", demo_tfds, tagger_workdir, **{"ablation.grad": False, "ablation.shared_encoder": False,
                                                          "total_steps": 2, "eval_every": 0, "checkpoint_every": 2})
  task, model = _task_and_model(c, str(tmp_path / "g"))
  paths = ["/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, task.trainable))]
  assert paths and not any(p.startswith("query_encoder") for p in paths)
  assert any(p.startswith("encoder/layers") for p in paths)
  assert model.query_grad is False and jax.tree.leaves(nnx.state(model.query_encoder, nnx.Param))


def test_an_init_workdir_with_init_off_is_refused_not_ignored(tmp_path):
  c = _config("care_sep", "unused_tfds", "unused_tagger", **{"init.workdir": str(tmp_path / "htsat")})
  assert c.ablation.init is False
  with pytest.raises(ValueError, match="config.ablation.init=True"):
    get_task(c, str(tmp_path / "run")).initialize_state({}, {})
  with pytest.raises(ValueError, match="config.ablation.init=True"):  # before any anchor mining
    get_task(c, str(tmp_path / "run2")).prepare()
