"""MAM-CLAP / SupMAM-CLAP: the teacher's signal path (resampling, grid mapping), Eq. (1) and the frozen teacher.

References: ``scipy.signal.resample_poly`` for the in-graph resampler; explicit numpy loops for the token-grid maps
(interval overlaps, half-pixel bilinear, nearest); seed 004 Eq. (1) written out in numpy; the trainer end to end
with a teacher that is an HTS-AT tagging run (configs/sed_htsat.py:tiny), checked bit-exactly unchanged.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import signal

from spine_utils import REPO
from uss_jax.audio import frontends
from uss_jax.models import htsat
from uss_jax.tasks import mam

sys.path.insert(0, str(REPO))
from configs import mam_clap, sed_htsat, supmam_clap  # noqa: E402  pylint: disable=wrong-import-position


def test_resample_poly_matches_scipy():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 1001))
  fn = jax.jit(mam.resample_poly, static_argnums=(1, 2))
  for up, down in ((3, 1), (2, 1), (1, 3), (4, 3), (6, 4)):
    want = signal.resample_poly(x, up, down, axis=-1)
    got = np.asarray(fn(jnp.asarray(x, jnp.float32), up, down))
    assert got.shape == want.shape, (up, down)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=0, err_msg=f"{up}/{down}")
  assert mam.resample_ratio(16000, 48000) == (3, 1) and mam.resample_ratio(48000, 32000) == (2, 3)


def _np_map_1d(n_in, n_out, method):
  m = np.zeros((n_out, n_in))
  for i in range(n_out):
    if method == "area":  # overlap of [i, i+1) * n_in / n_out with each [j, j+1), over the cell width
      lo, hi = i * n_in / n_out, (i + 1) * n_in / n_out
      for j in range(n_in):
        m[i, j] = max(0.0, min(hi, j + 1) - max(lo, j)) / (hi - lo)
    elif method == "bilinear":  # sample at the cell centre, half-pixel convention, clamped
      s = min(max((i + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1)
      j0 = int(np.floor(s))
      j1 = min(j0 + 1, n_in - 1)
      m[i, j0] += 1 - (s - j0)
      m[i, j1] += s - j0
    else:
      m[i, min(int((i + 0.5) * n_in / n_out), n_in - 1)] = 1.0
  return m


def test_token_grid_mapping_matches_numpy():
  for method in mam.GRID_MAPS:
    for n_in, n_out in ((32, 64), (2, 8), (16, 8), (3, 7), (7, 3), (5, 5)):
      np.testing.assert_allclose(mam.grid_map_matrix(n_in, n_out, method), _np_map_1d(n_in, n_out, method),
                                 atol=1e-12, err_msg=f"{method} {n_in}->{n_out}")
  # 32 x 2 teacher tokens -> 64 x 8 student patches with 'area': each teacher token copied to 2 x 4 patches.
  rng = np.random.default_rng(1)
  tok = rng.standard_normal((2, 32, 2, 5))
  out = np.asarray(mam.map_token_grid(jnp.asarray(tok, jnp.float32), (64, 8), "area")).reshape(2, 64, 8, 5)
  np.testing.assert_allclose(out, np.repeat(np.repeat(tok, 2, axis=1), 4, axis=2), atol=1e-6)
  # General case: a per-(t, f) loop over the separable weights; output in student token order t * F + f.
  tok = rng.standard_normal((1, 5, 3, 4))
  mt, mf = _np_map_1d(5, 7, "bilinear"), _np_map_1d(3, 4, "bilinear")
  want = np.zeros((1, 7 * 4, 4))
  for t in range(7):
    for f in range(4):
      want[0, t * 4 + f] = sum(mt[t, j] * mf[f, k] * tok[0, j, k] for j in range(5) for k in range(3))
  np.testing.assert_allclose(np.asarray(mam.map_token_grid(jnp.asarray(tok, jnp.float32), (7, 4), "bilinear")),
                             want, atol=1e-5)


def _np_eq1(pred, target, mask):
  per_token = ((pred - target) ** 2).mean(-1)
  return per_token[mask == 0].mean() + per_token[mask == 1].mean()


def _tiny_teacher(rate=32000):
  """A small HTS-AT at 32 kHz (the data is 16 kHz: resampled x2 inside the step); 1.27 s -> 102 frames -> 128."""
  fe = frontends.get_frontend("panns", sample_rate=rate, n_fft=512, hop_length=400, n_mels=16, fmax=8000.0)
  return htsat.HTSAT(3, mel_bins=16, freq_ratio=2, target_frames=128, patch_size=4, embed_dim=8, depths=(2, 2),
                     num_heads=(2, 4), window_size=4, drop_path=0.0, frontend=fe, rngs=nnx.Rngs(1))


def test_task_losses_are_eq1_on_mapped_teacher_tokens():
  """MAM-CLAP and SupMAM-CLAP losses of one student / teacher pair (one compilation) against numpy."""
  config = supmam_clap.get_config("tiny")
  config.teacher.workdir = "/nonexistent"  # never opened: the test builds the model itself
  task = mam.MAMTask(config, "/nonexistent")
  plain_config = mam_clap.get_config("tiny")
  plain_config.teacher.workdir = "/nonexistent"
  plain_task = mam.MAMTask(plain_config, "/nonexistent")
  teacher = _tiny_teacher()
  student = mam.build_mae(config, num_classes=4, rngs=nnx.Rngs(0), out_dim=mam.teacher_feature_dim(teacher))
  model = mam.CLAPDistiller(student, teacher, data_rate=16000, teacher_rate=32000)
  assert model.resample == (2, 1) and model.target_dim == 16
  rng = np.random.default_rng(3)
  batch = {"waveform": jnp.asarray(rng.standard_normal((4, 20320)) * 0.1, jnp.float32),
           "labels": jnp.asarray(np.eye(4)[[0, 1, 3, 0]], jnp.float32), "label": jnp.asarray([0, 1, 3, 0])}
  model.train()

  @nnx.jit
  def run(m, b, key):
    (loss, aux), grads = nnx.value_and_grad(lambda m: task.loss(m, b, nnx.Rngs(default=key)), has_aux=True)(m)
    plain = plain_task.loss(m, b, nnx.Rngs(default=key))
    out = m(task.frontend(b["waveform"]), rngs=nnx.Rngs(default=key))
    m.teacher.eval()
    tokens = m.teacher(mam.resample_poly(b["waveform"], 2, 1))["tokens"]
    return loss, aux, plain, out, tokens, grads["teacher"]

  loss, aux, (plain_loss, plain_aux), out, tokens, teacher_grads = run(model, batch, jax.random.key(5))
  loss, aux, plain_loss, out, tokens = jax.tree.map(np.asarray, (loss, aux, plain_loss, out, tokens))
  assert tokens.shape == (4, 16, 2, 16) and out["pred"].shape == (4, 64, 16)
  mask = out["mask"]
  assert int(mask[0].sum()) == 64 - 51  # 20 % of 64 masked: 51 kept (floor)
  target = np.einsum("tj,fk,bjkc->btfc", _np_map_1d(16, 8, "area"), _np_map_1d(2, 8, "area"),
                     tokens.astype(np.float64)).reshape(4, 64, 16)
  pred = out["pred"].astype(np.float64)
  eq1 = _np_eq1(pred, target, mask)
  per = ((pred - target) ** 2).mean(-1)
  for a in (aux, plain_aux):
    np.testing.assert_allclose(a["target_loss"], eq1, rtol=2e-5)
    np.testing.assert_allclose(a["masked_loss"], per[mask == 1].mean(), rtol=2e-5)
    np.testing.assert_allclose(a["visible_loss"], per[mask == 0].mean(), rtol=2e-5)
  np.testing.assert_allclose(plain_loss, eq1, rtol=2e-5)
  z = out["logits"].astype(np.float64) / config.supmam.temperature
  logp = z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
  ce = -(np.eye(4)[[0, 1, 3, 0]] * logp).sum(1).mean()
  np.testing.assert_allclose(aux["cls_loss"], ce, rtol=2e-5)
  np.testing.assert_allclose(loss, eq1 + 1e-4 * ce, rtol=2e-5)
  # The teacher gets no gradient through the targets.
  leaves = jax.tree.leaves(teacher_grads)
  assert leaves and all(not np.any(np.asarray(g)) for g in leaves)


def test_config_errors():
  c = mam_clap.get_config("tiny")
  with pytest.raises(ValueError, match="exactly one of config.teacher.checkpoint"):
    mam.MAMTask(c, "/nonexistent")
  c.teacher.workdir, c.teacher.checkpoint = "/a", "/b"
  with pytest.raises(ValueError, match="exactly one"):
    mam.MAMTask(c, "/nonexistent")
  c.teacher.checkpoint = ""
  c.teacher.grid_map = "cubic"
  with pytest.raises(ValueError, match="grid_map"):
    mam.MAMTask(c, "/nonexistent")
  student = mam.build_mae(mam_clap.get_config("tiny"), 0, nnx.Rngs(0), out_dim=16)
  with pytest.raises(ValueError, match="projected"):
    mam.CLAPDistiller(student, _tiny_teacher(), data_rate=16000, teacher_rate=32000, target="projected")
  with pytest.raises(FileNotFoundError, match="sed_htsat"):
    mam.load_htsat_run("/nonexistent")


def test_clap_checkpoint_teacher(tmp_path):
  """config.teacher.checkpoint: a LAION-CLAP file (the fake one of test_convert_clap.py, 8 kHz front end) as teacher,
  projected target; the 16 kHz batch is resampled by 1/2 for it."""
  from test_convert_clap import FE, JOINT, fake_laion_state_dict  # pylint: disable=import-outside-toplevel
  from uss_jax.convert import common  # pylint: disable=import-outside-toplevel
  sd = fake_laion_state_dict()
  common.write_safetensors(tmp_path / "clap.safetensors", sd)
  c = mam_clap.get_config("tiny")
  c.teacher.checkpoint = str(tmp_path / "clap.safetensors")
  c.teacher.frontend = {"name": "panns", **FE}
  c.teacher.freq_ratio, c.teacher.target_frames, c.teacher.target = 2, 64, "projected"
  task = mam.MAMTask(c, str(tmp_path))
  task._load_teacher()  # pylint: disable=protected-access  (prepare() would also build the dataset)
  assert isinstance(task.teacher, htsat.CLAPAudioEncoder) and task.teacher.audio_branch.deterministic
  np.testing.assert_array_equal(np.asarray(task.teacher.audio_projection.linear1.kernel[...]),
                                sd["module.audio_projection.0.weight"].T)
  model = nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0)))
  assert model.resample == (1, 2) and model.target_dim == JOINT and model.student.decoder.out_dim == JOINT
  # 4032 samples at 16 kHz -> 2016 at 8 kHz -> 32 frames (stretched to 64) -> 8 x 2 tokens -> 8 x 8 student grid.
  target = nnx.eval_shape(lambda m, w: m.teacher_targets(w, (8, 8)), model,
                          jax.ShapeDtypeStruct((2, 4032), jnp.float32))
  assert target.shape == (2, 64, JOINT)
  c.teacher.resample = False
  with pytest.raises(ValueError, match="resample"):
    mam.MAMTask(c, str(tmp_path))._load_teacher()  # pylint: disable=protected-access


# ---------------------------------------------------------------------------------------------------------------------
# Through the trainer: an HTS-AT tagging run is the teacher; it stays exactly as trained while the student learns.
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def teacher_workdir(demo_tfds, tmp_path_factory):
  from uss_jax.train import trainer  # pylint: disable=import-outside-toplevel
  c = sed_htsat.get_config("tiny")
  c.data.tfds_dir = demo_tfds
  c.total_steps, c.checkpoint_every = 2, 2
  workdir = str(tmp_path_factory.mktemp("htsat_teacher"))
  trainer.train_and_evaluate(c, workdir)
  return workdir


def test_teacher_frozen_while_student_trains(demo_tfds, teacher_workdir, tmp_path):
  from uss_jax.train import trainer  # pylint: disable=import-outside-toplevel
  c = supmam_clap.get_config("tiny")
  c.data.tfds_dir = demo_tfds
  c.teacher.workdir = teacher_workdir
  c.total_steps, c.log_every, c.eval_every, c.checkpoint_every = 2, 1, 2, 2
  result = trainer.train_and_evaluate(c, str(tmp_path))
  losses_ = [loss for _, loss in result["history"]]
  assert len(losses_) == 2 and all(np.isfinite(losses_))
  ev = result["eval"]
  assert np.isfinite(ev["target_loss"]) and ev["target_loss"] > 0 and 0 <= ev["mAP"] <= 1
  state = result["state"]["model"]
  # The teacher equals the tagging run's weights (parameters and BatchNorm statistics), bit for bit.
  teacher, _ = mam.load_htsat_run(teacher_workdir)
  ref = jax.tree.leaves(jax.tree.map(np.asarray, nnx.state(teacher)))
  got = jax.tree.leaves(jax.tree.map(np.asarray, state["teacher"]))
  assert len(ref) == len(got) > 20
  for a, b in zip(ref, got):
    np.testing.assert_array_equal(a, b)
  # Only the student is optimised: the optimizer state covers student parameters alone, and every student kernel
  # received gradient (non-zero first moments), so its weights moved.
  opt = [(jax.tree_util.keystr(p), np.asarray(x))
         for p, x in jax.tree_util.tree_leaves_with_path(result["state"]["opt"])]
  assert not any("teacher" in p for p, _ in opt)
  mu = [x for p, x in opt if "mu" in p and "student" in p and "kernel" in p]
  assert len(mu) > 5 and all(np.any(x) for x in mu)
