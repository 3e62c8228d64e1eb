"""The joint_separation task (uss_jax/tasks/joint_separation.py) with CaRE-SEP on the demo corpus:
Eq. (1) on both sources with the MAE + SDR loss (and the CLS+SEP BCE) against numpy, the three SDRs of the summary
against numpy, a short CLS+SEP run whose loss falls, and ``uss-jax separate`` by audio query on the run (Table 2's
switches and ST-SED-SEP: tests/test_st_sed_sep_task.py)."""

from __future__ import annotations

import subprocess

from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf

from spine_utils import CLI, REPO, apply_overrides, cli_env
from uss_jax import inference
from uss_jax.tasks import get_task
from uss_jax.train import trainer

# The session's CaRE-SEP run (care_run) is trained once: every test of this file on one xdist worker (Makefile:
# --dist loadgroup). The tagger run is per worker anyway, so this group is not the separation tests' one.
pytestmark = pytest.mark.xdist_group("care_run")


def _config(name, demo_tfds, tagger_workdir, variant="tiny", **overrides):
  import sys  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, str(REPO))
  from configs import care_sep, st_sed_sep  # pylint: disable=import-outside-toplevel
  c = (care_sep if name == "care_sep" else st_sed_sep).get_config(variant)
  c.data.tfds_dir, c.query.workdir = demo_tfds, tagger_workdir
  apply_overrides(c, **overrides)
  return c


@pytest.fixture(scope="session")
def care_run(demo_tfds, tagger_workdir, tmp_path_factory):
  c = _config("care_sep", demo_tfds, tagger_workdir, "tiny,cls", total_steps=12, eval_every=12, checkpoint_every=12,
              **{"optimizer.learning_rate": 3e-3})
  workdir = str(tmp_path_factory.mktemp("care"))
  return c, workdir, trainer.train_and_evaluate(c, workdir)


def _task_and_model(config, workdir):
  task = get_task(config, workdir)
  task.prepare()
  model = task.build_model(nnx.Rngs(0))
  model.eval()
  return task, model


def test_loss_is_mae_plus_negative_sdr_on_both_sources_plus_bce(care_run):
  config, workdir, _ = care_run
  task, model = _task_and_model(config, workdir)
  batch = next(iter(task.train_iterator(0, 1)))
  np.testing.assert_allclose(batch["mixture"], batch["target"] + batch["interferer"], atol=1e-6)
  jb = {k: jnp.asarray(v) for k, v in batch.items()}
  loss, aux = task.loss(model, jb, nnx.Rngs(0))
  sources = np.concatenate([batch["target"], batch["interferer"]])
  query = model.query(jnp.asarray(sources))
  est = np.asarray(model(jnp.asarray(np.concatenate([batch["mixture"]] * 2)), query["embedding"]), np.float64)
  mae = np.abs(est - sources).mean()
  sdr = np.mean(10 * np.log10(np.sum(sources ** 2, -1) / np.sum((est - sources) ** 2, -1)))
  logits = np.asarray(query["logits"], np.float64)
  labels = np.eye(logits.shape[-1])[np.concatenate([batch["class_id"], batch["interferer_class_id"]])]
  bce = np.mean(np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits))))
  np.testing.assert_allclose(float(aux["mae"]), mae, rtol=1e-4)
  np.testing.assert_allclose(float(aux["sdr"]), sdr, rtol=1e-3, atol=1e-3)
  np.testing.assert_allclose(float(loss), mae - sdr + bce, rtol=1e-3, atol=1e-3)


def test_summary_has_the_three_sdrs_and_map(care_run):
  config, workdir, _ = care_run
  task = get_task(config, workdir)
  task.prepare()
  rng = np.random.default_rng(0)
  t, i = rng.standard_normal((2, 4, 800)).astype(np.float32)
  out = {"target": t, "mixture": t + i, "interferer": i, "est_mixture": t + 0.1 * i, "est_clean": t.copy(),
         "est_silence": 0.1 * i, "class_id": np.array([0, 1, 0, 1]),
         "clipwise": np.eye(len(task.class_names), dtype=np.float32)[[0, 1, 0, 1]]}
  s = task.summarize(out)
  np.testing.assert_allclose(s["silence_SDR"], 20.0, atol=1e-4)  # energy of the input removed: x 0.01
  sdri = np.mean([np.median(10 * np.log10(np.mean(t[k] ** 2) / np.mean((0.1 * i[k]) ** 2))
                            - 10 * np.log10(np.mean(t[k] ** 2) / np.mean(i[k] ** 2))) for k in ([0, 2], [1, 3])])
  np.testing.assert_allclose(s["SDRi"], sdri, rtol=1e-4)
  assert s["clean_SDR"] > 60 and s["mAP"] == pytest.approx(1.0)


def test_care_sep_trains_evaluates_and_separates_through_the_cli(care_run, tmp_path):
  config, workdir, result = care_run
  losses = [loss for _, loss in result["history"]]
  assert np.mean(losses[-4:]) < np.mean(losses[:4]), losses
  ev = result["eval"]
  for k in ("mixture_SDR", "clean_SDR", "silence_SDR", "SDRi", "mixture_SDR_half_mixture", "mAP"):
    assert np.isfinite(ev[k]), (k, ev)
  sep = inference.Separator.from_workdir(workdir)
  assert sep.info.name == "care_sep" and sep.info.condition_size == 8 * 4
  x = 0.1 * np.random.default_rng(1).standard_normal(3 * 16000).astype(np.float32)
  sf.write(tmp_path / "mix.wav", x, 16000, subtype="FLOAT")
  sf.write(tmp_path / "q.wav", x[:16000], 16000, subtype="FLOAT")
  proc = subprocess.run(CLI + ["separate", "--checkpoint", workdir, "--mixture", str(tmp_path / "mix.wav"),
                               "--query-audio", str(tmp_path / "q.wav"), "-o", str(tmp_path / "out.wav")],
                        env=cli_env(), capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  y, rate = sf.read(tmp_path / "out.wav", dtype="float32")
  cond, _ = sep.condition(audio=x[:16000])
  np.testing.assert_allclose(y, sep.separate(x, 16000, cond), atol=1e-5)  # the CLI is the library path
  assert rate == 16000 and y.shape == x.shape
