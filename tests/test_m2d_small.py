"""configs/m2d_small.py: the M2D-front-end masked pretraining recipe, and ``tse.m2d_from_mam_run`` on its run.

Independent path for the M2D: the run's checkpoint read with orbax (``spine_utils.checkpoint_arrays``), put into
the task's own ``MaskedAutoencoder`` encoder (``mam.build_mae``), applied to the run's front end output without
masking (``VisionTransformer.__call__(return_layers=True)``); its time-major tokens reshaped to ``(b, T, F D)``
must equal the M2D's ``layers`` / ``features``.
"""

import sys

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf

from spine_utils import REPO, checkpoint_arrays
from uss_jax.models import m2d as m2d_lib
from uss_jax.tasks import mam, tagging, tse
from uss_jax.train import trainer

sys.path.insert(0, str(REPO))
from configs import common, m2d_small, soundbeam  # noqa: E402  pylint: disable=wrong-import-position

TOL = 1e-5


def one_device_mesh():
  return jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))


@pytest.fixture(scope="session")
def m2d_run(demo_tfds, tmp_path_factory):
  """configs/m2d_small.py:tiny trained 2 steps on the demo corpus: (config, workdir, result)."""
  c = m2d_small.get_config("tiny")
  c.data.tfds_dir = demo_tfds
  c.total_steps, c.checkpoint_every, c.eval_every = 2, 2, 2
  workdir = str(tmp_path_factory.mktemp("m2d_small_tiny"))
  return c, workdir, trainer.train_and_evaluate(c, workdir, mesh=one_device_mesh())


def _load(module: nnx.Module, arrays: dict[tuple[str, ...], np.ndarray]) -> None:
  """Sets every variable of ``module`` from ``arrays`` (all of them must be there)."""
  state = nnx.state(module)
  flat = nnx.to_flat_state(state)
  for path, var in flat:
    key = tuple(str(k) for k in path)
    assert key in arrays, key
    var.set_value(jnp.asarray(arrays[key]))
  nnx.update(module, nnx.from_flat_state(flat))


def _audio(samples: int) -> np.ndarray:
  """Two demo clips, first ``samples`` samples, ``(2, samples)`` float32."""
  import glob  # pylint: disable=import-outside-toplevel
  paths = sorted(glob.glob(f"{common.DEMO_AUDIO_DIR}/*.flac"))[:2]
  clips = [sf.read(p, dtype="float32", frames=samples)[0] for p in paths]
  return np.stack([c if c.ndim == 1 else c.mean(axis=1) for c in clips])


def _max_errors(m2d: m2d_lib.M2D, encoder, frontend, wave: np.ndarray) -> dict[str, float]:
  """M2D outputs vs the ViT's own forward on ``frontend(wave)`` (time-major tokens -> ``(b, T, F D)``)."""
  out = m2d(jnp.asarray(wave))
  ref = encoder(frontend(jnp.asarray(wave)), return_layers=True)
  b = wave.shape[0]
  t = out["features"].shape[1]

  def frames(z):  # (b, T F, D) time-major -> (b, T, F D)
    return np.asarray(z).reshape(b, t, -1)

  errors = {"patch": np.abs(np.asarray(out["layers"][0]) - frames(ref["patch_embed_out"])).max(),
            "final": np.abs(np.asarray(out["features"]) - frames(ref["normed_tokens"][:, 1:])).max()}
  for i in range(encoder.depth):
    errors[f"block{i}"] = np.abs(np.asarray(out["layers"][i + 1]) - frames(ref["layers"][i][:, 1:])).max()
  assert out["layers"].shape[0] == encoder.depth + 1
  return {k: float(v) for k, v in errors.items()}


def test_tiny_recipe_trains(m2d_run):
  config, _, result = m2d_run
  assert config.frontend.name == "m2d" and tuple(config.model.encoder["patch_size"]) == (2, 80)
  losses = [loss for _, loss in result["history"]]
  assert result["step"] == 2 and len(losses) == 2 and all(np.isfinite(losses)), losses
  assert np.isfinite(result["eval"]["rec_loss"]), result["eval"]


def test_m2d_from_mam_run_equals_the_mae_encoder(m2d_run):
  config, workdir, _ = m2d_run
  weights, arch = tse.m2d_from_mam_run(workdir)
  assert arch["img_size"] == (80, 100) and arch["patch_size"] == (80, 2)  # 1 s unit: 100 frames, 50 tokens
  m2d = m2d_lib.M2D(**arch, rngs=nnx.Rngs(0))
  _load(m2d, weights)
  np.testing.assert_allclose(np.asarray(m2d.norm_stats[...]), m2d_small.DEMO_NORM_STATS, rtol=1e-6)
  # The independent path: the checkpoint (orbax) in the task's own encoder.
  prefix = "/model/encoder/"
  ckpt = {tuple(k[len(prefix):].replace("/value", "").split("/")): v
          for k, v in checkpoint_arrays(workdir).items() if k.startswith(prefix)}
  encoder = mam.build_mae(config, 0, nnx.Rngs(1)).encoder
  _load(encoder, ckpt)
  encoder.eval()
  frontend = mam.build_frontend(config)
  for samples in (99 * 160, 59 * 160):  # 100 frames (one whole unit), 60 frames (a shorter input)
    errors = _max_errors(m2d, encoder, frontend, _audio(samples))
    print(f"m2d_small tiny run, {samples} samples: max |M2D - ViT| {errors}")
    assert max(errors.values()) < TOL, errors
  # Can fail: the same weights with the blocks of another run differ.
  other = dict(weights)
  other[("blocks", "0", "mlp", "fc1", "bias")] = weights[("blocks", "0", "mlp", "fc1", "bias")] + 0.1
  _load(m2d, other)
  assert max(_max_errors(m2d, encoder, frontend, _audio(99 * 160)).values()) > 1e-3


def test_m2d_from_mam_run_orders_tokens_f_t_and_keeps_a_learned_table(monkeypatch):
  """A 2-wide frequency grid (patches 2 x 40) and a learned position table, so the (t f) -> (f t) reorder of the
  tokens and of the table matters (on the 80 x 2 grid it is the identity)."""
  config = m2d_small.get_config("tiny")
  config.model.encoder = {**config.model.encoder, "patch_size": (2, 40), "pos_embed": "learned"}
  encoder = mam.build_mae(config, 0, nnx.Rngs(3)).encoder
  flat = {tuple(str(k) for k in p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(encoder))}
  flat[("pos_embed",)] = flat[("pos_embed",)] * 50.0  # a table as large as the patch tokens
  monkeypatch.setattr(tagging, "load_mam_encoder", lambda workdir, step: (flat, config, 0))
  weights, arch = tse.m2d_from_mam_run("unused")
  assert arch["patch_size"] == (40, 2)
  m2d = m2d_lib.M2D(**arch, rngs=nnx.Rngs(0))
  _load(m2d, weights)
  _load(encoder, flat)
  encoder.eval()
  for samples in (99 * 160, 59 * 160):
    errors = _max_errors(m2d, encoder, mam.build_frontend(config), _audio(samples))
    print(f"2 x 40 patches, learned table, {samples} samples: max |M2D - ViT| {errors}")
    assert max(errors.values()) < TOL, errors


def test_soundbeam_m2d_enrollment_from_the_run(m2d_run, demo_tfds, tmp_path):
  _, workdir, _ = m2d_run
  c = soundbeam.get_config("tiny+m2d_enrollment")
  c.data.tfds_dir = demo_tfds
  c.model.m2d.workdir = workdir
  c.total_steps, c.checkpoint_every, c.eval_every = 1, 1, 0
  out = str(tmp_path / "sb")
  result = trainer.train_and_evaluate(c, out, mesh=one_device_mesh())
  assert result["step"] == 1 and np.isfinite(result["history"][-1][1])
  mam_arrays = checkpoint_arrays(workdir)
  sb_arrays = checkpoint_arrays(out)
  name = "blocks/0/attn/qkv/kernel"
  m2d_keys = [k for k in sb_arrays if "m2d" in k and k.endswith(name) and k.startswith("/model/")]
  assert m2d_keys, sorted(sb_arrays)[:20]
  for key in m2d_keys:  # frozen: still the pretraining run's after a step
    np.testing.assert_array_equal(sb_arrays[key], mam_arrays["/model/encoder/" + name])
