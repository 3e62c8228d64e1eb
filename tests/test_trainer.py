"""The generic trainer on the tagging task: mesh invariance, restore onto another mesh, throughput report.

The mesh-invariance runs use SGD with momentum: Adam's first update is lr * g / |g| = +-lr for every weight, so a
gradient that is pure float rounding noise (~1e-9) flips a weight by 2 lr between two summation orders; that is
Adam amplifying rounding, not the sharding changing the math (measured: identical parameters after step 1 to 5e-8,
then +-2 lr on a few weights of the (2, 2, 2) mesh after step 2). SGD carries the rounding through linearly.
"""

import jax
import numpy as np
import pytest

from spine_utils import tiny_config
from uss_jax.train import checkpoint as ckpt_lib
from uss_jax.train import sharding as sh
from uss_jax.train import trainer


def _sgd(config):
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.05
  return config


def _losses(result):
  return np.array([loss for _, loss in result["history"]])


@pytest.fixture(scope="session")
def one_device_run(demo_tfds, tmp_path_factory):
  config = _sgd(tiny_config(demo_tfds, total_steps=4))
  mesh = sh.create_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  return trainer.train_and_evaluate(config, str(tmp_path_factory.mktemp("one")), mesh=mesh)


@pytest.mark.parametrize("mesh_axes", [(8, 1, 1), (4, 2, 1), (2, 2, 2)])
def test_losses_match_one_device_on_8_device_meshes(one_device_run, demo_tfds, tmp_path, mesh_axes):
  config = _sgd(tiny_config(demo_tfds, total_steps=4))
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh_axes
  result = trainer.train_and_evaluate(config, str(tmp_path))
  ref = _losses(one_device_run)
  assert len(ref) == 4 and np.all(np.isfinite(ref))
  np.testing.assert_allclose(_losses(result), ref, rtol=1e-5, atol=1e-6)
  # Training moved the parameters identically too.
  a = jax.tree.leaves(jax.tree.map(np.asarray, one_device_run["state"]["model"]))
  b = jax.tree.leaves(jax.tree.map(np.asarray, result["state"]["model"]))
  for x, y in zip(a, b):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


def test_parameters_are_sharded_as_the_rules_say(demo_tfds, tmp_path):
  config = tiny_config(demo_tfds)
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
  run = trainer.build_run(config, str(tmp_path))
  state = run.init()
  # Cnn14 conv kernels are (kh, kw, conv_in, conv_out): conv_in replicated, tensor on conv_out where divisible.
  kernels = {"/".join(map(str, path)): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(state["model"])
             if leaf.ndim == 4}
  assert kernels
  for name, k in kernels.items():
    cout = k.shape[3]
    expected = (None, None, None, "tensor" if cout % 2 == 0 else None)
    assert tuple(k.sharding.spec) + (None,) * (4 - len(k.sharding.spec)) == expected, name
  # Adam moments follow their parameter: same shape -> same spec, leaf by leaf.
  by_shape = {k.shape: k.sharding.spec for k in kernels.values()}
  moments = [l for l in jax.tree.leaves(state["opt"]) if getattr(l, "ndim", 0) == 4]
  assert len(moments) == 2 * len(kernels)
  for m in moments:
    assert m.sharding.spec == by_shape[m.shape]
  assert any(k.sharding.spec != jax.sharding.PartitionSpec() for k in kernels.values())


def test_restore_onto_a_different_mesh(demo_tfds, tmp_path):
  config = tiny_config(demo_tfds, total_steps=2, checkpoint_every=2)
  config.mesh.data = 8
  saved = trainer.train_and_evaluate(config, str(tmp_path))
  config2 = tiny_config(demo_tfds, total_steps=2)
  config2.mesh.data, config2.mesh.fsdp, config2.mesh.tensor = 2, 2, 2
  run = trainer.build_run(config2, str(tmp_path))
  checkpointer = ckpt_lib.Checkpointer(tmp_path / "checkpoints")
  restored, step = checkpointer.restore(run.abstract_sharded_state())
  checkpointer.close()
  assert step == 2
  for a, b, s in zip(jax.tree.leaves(saved["state"]), jax.tree.leaves(restored),
                     jax.tree.leaves(run.state_shardings)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert b.sharding == s
  assert any(len(b.sharding.device_set) == 8 and not b.sharding.is_fully_replicated
             for b in jax.tree.leaves(restored))


def test_throughput_report():
  tput = trainer.throughput(global_batch=16, steps=10, seconds=2.0, flops_per_device=None)
  assert tput == {"examples_per_sec": 80.0, "step_time_s": 0.2}
  assert trainer.peak_flops(jax.devices()[0]) is None


def test_nan_loss_stops_training_with_a_clear_error(demo_tfds, tmp_path):
  config = _sgd(tiny_config(demo_tfds, total_steps=6, checkpoint_every=100))
  config.optimizer.learning_rate = 1e30
  config.schedule.name = "constant"
  with pytest.raises(FloatingPointError, match=r"training loss is (nan|inf) at step \d"):
    trainer.train_and_evaluate(config, str(tmp_path))
