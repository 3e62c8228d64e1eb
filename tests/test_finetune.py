"""ViT fine-tuning in the tagging task (configs/audiomae_finetune.py): pretrained weights, linear probe, mixup, folds.

References: the pretraining run's own checkpoint arrays (read back with orbax, no target), a synthetic AudioMAE
state_dict in PyTorch layout (``Linear`` weights transposed by hand), numpy mixup / BCE formulas, the ESC-50 CSV.
Layer-wise LR decay against AudioMAE's ``param_groups_lrd`` is in test_optim.py.
"""

from __future__ import annotations

import csv
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf
from flax import nnx

from spine_utils import REPO, checkpoint_arrays

sys.path.insert(0, str(REPO))
from configs import audiomae, audiomae_finetune  # noqa: E402  pylint: disable=wrong-import-position
from uss_jax.tasks import tagging  # noqa: E402  pylint: disable=wrong-import-position
from uss_jax.train import optim, trainer  # noqa: E402  pylint: disable=wrong-import-position

FRESH = ("fc_norm", "head")


def one_device_mesh():
  return jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))


def encoder_arrays(state) -> dict[str, np.ndarray]:
  """``{'blocks/0/attn/qkv/kernel': array}`` of the tagger encoder's variables in a train state."""
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(state["model"]["encoder"]):
    names = [n for n in optim.path_names(path) if n != "value"]
    out["/".join(names)] = np.asarray(leaf)
  return out


def finetune_config(tfds_dir, **init):
  c = audiomae_finetune.get_config("tiny")
  c.data.tfds_dir = tfds_dir
  for k, v in init.items():
    c.init[k] = v
  return c


@pytest.fixture(scope="session")
def mam_run(demo_tfds, tmp_path_factory):
  """configs/audiomae.py:tiny trained 2 steps; returns (workdir, {'blocks/0/...': array} of its encoder)."""
  c = audiomae.get_config("tiny")
  c.data.tfds_dir = demo_tfds
  c.total_steps, c.checkpoint_every, c.eval_every = 2, 2, 0
  workdir = tmp_path_factory.mktemp("mam_tiny")
  trainer.train_and_evaluate(c, str(workdir), mesh=one_device_mesh())
  flat = checkpoint_arrays(workdir)
  prefix = "/model/encoder/"
  encoder = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
  assert encoder, sorted(flat)[:10]
  return str(workdir), encoder


def test_fine_tune_starts_from_the_pretrained_encoder_and_linear_probe_keeps_it(mam_run, demo_tfds, tmp_path):
  workdir, pretrained = mam_run
  # Step 0 of a full fine-tune: every encoder variable but the fresh fc_norm / head is the pretraining run's.
  run = trainer.build_run(finetune_config(demo_tfds, workdir=workdir), str(tmp_path / "ft"), one_device_mesh())
  state0, step = trainer.initial_state(run, None)
  assert step == 0
  start = encoder_arrays(state0)
  compared = 0
  for name, value in start.items():
    if name.split("/")[0] in FRESH:
      continue
    np.testing.assert_array_equal(value, pretrained[name], err_msg=name)
    compared += 1
  assert compared == len([k for k in pretrained if k.split("/")[0] != "norm"])  # all but the MAE encoder's norm
  assert "norm/scale" in pretrained and "norm/scale" not in start  # dropped, as AudioMAE's global-pool model

  # Linear probe: 3 steps move the head and fc_norm only; the encoder stays bit-identical to the pretrained one.
  c = finetune_config(demo_tfds, workdir=workdir, linear_probe=True)
  c.total_steps, c.eval_every, c.checkpoint_every = 3, 3, 3
  result = trainer.train_and_evaluate(c, str(tmp_path / "lp"), mesh=one_device_mesh())
  after = encoder_arrays(result["state"])
  for name, value in after.items():
    if name.split("/")[0] in FRESH:
      continue
    np.testing.assert_array_equal(value, pretrained[name], err_msg=name)
  head_move = np.abs(after["head/kernel"] - start["head/kernel"]).max()
  assert head_move > 1e-4, head_move  # head init is trunc_normal(2e-5); three AdamW steps of lr ~1e-3 move it
  assert np.abs(after["fc_norm/scale"] - start["fc_norm/scale"]).max() > 1e-5
  assert np.isfinite(result["eval"]["mAP"]) and 0.0 <= result["eval"]["accuracy"] <= 1.0

  # Full fine-tune: the encoder trains too (deepest block more than the patch embedding: layer decay 0.75^2).
  c = finetune_config(demo_tfds, workdir=workdir)
  c.total_steps, c.eval_every, c.checkpoint_every = 2, 0, 2
  result = trainer.train_and_evaluate(c, str(tmp_path / "ft_run"), mesh=one_device_mesh())
  moved = encoder_arrays(result["state"])
  assert np.abs(moved["blocks/0/mlp/fc1/kernel"] - pretrained["blocks/0/mlp/fc1/kernel"]).max() > 1e-6
  assert all(np.isfinite(loss) for _, loss in result["history"])


def test_init_from_an_audiomae_checkpoint_file(demo_tfds, tmp_path):
  """A timm-layout state_dict (.npz, 'model.' prefix, with a pretraining 'norm' and a decoder key) fills the ViT."""
  from uss_jax.convert import audiomae as conv  # pylint: disable=import-outside-toplevel
  c = finetune_config(demo_tfds)
  ref = tagging.build_vit_tagger(c, 4, nnx.Rngs(1)).encoder
  shapes = {k: s for k, s in conv.torch_shapes(ref).items() if not k.startswith(("fc_norm", "head"))}
  rng = np.random.default_rng(0)
  sd = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
  d = sd["cls_token"].shape[-1]
  sd["norm.weight"], sd["norm.bias"] = np.ones(d, np.float32), np.zeros(d, np.float32)
  sd["decoder_embed.weight"] = np.zeros((8, d), np.float32)
  path = tmp_path / "pretrained.npz"
  np.savez(path, **{f"model.{k}": v for k, v in sd.items()})

  c.init.checkpoint = str(path)
  run = trainer.build_run(c, str(tmp_path / "run"), one_device_mesh())
  got = encoder_arrays(trainer.initial_state(run, None)[0])
  np.testing.assert_array_equal(got["cls_token"], sd["cls_token"])
  qkv = got["blocks/0/attn/qkv/kernel"]  # (D, 3, heads, head_dim)
  np.testing.assert_array_equal(qkv.reshape(qkv.shape[0], -1), sd["blocks.0.attn.qkv.weight"].T)
  np.testing.assert_array_equal(got["blocks/0/norm2/scale"], sd["blocks.0.norm2.weight"])
  np.testing.assert_array_equal(got["patch_embed/proj/kernel"],
                                sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(got["fc_norm/scale"], np.ones(d))  # fresh (the file has none)


def test_mixup_batches_and_soft_label_bce(demo_tfds, tmp_path):
  c = finetune_config(demo_tfds)
  c.batch_size = 16
  c.data.mixup_alpha, c.data.mixup_prob = 10.0, 0.5
  task = tagging.TaggingTask(c, str(tmp_path))
  task.prepare()
  source = tagging.data_source(task.dataset, "train")
  y = np.stack([np.asarray(source[i]["labels"], np.float64) for i in range(len(source))])
  batch = next(task.train_iterator(0, 1))
  lam = batch["mixup_lambda"].astype(np.float64)
  mixed = lam < 1.0
  assert 0 < mixed.sum() < len(lam)  # p = 0.5 over 16 rows
  assert np.all((lam[mixed] > 0.2) & (lam[mixed] < 0.8))  # Beta(10, 10): sd 0.11 around 0.5
  for row, lab, l in zip(batch["labels"].astype(np.float64), batch["label"], lam):
    firsts = y[y[:, lab] == 1]  # candidates for the first clip (its primary label is ``label``)
    # numpy mixup: λ y1 + (1 - λ) y2 over every (first, second) pair of training clips; one must match.
    candidates = l * firsts[:, None, :] + (1 - l) * y[None, :, :]
    assert np.abs(candidates - row).max(axis=-1).min() < 1e-6, (lab, l, row)

  logits = np.random.default_rng(0).standard_normal(batch["labels"].shape)
  z, t = logits, batch["labels"].astype(np.float64)
  expected = np.mean(-(t * np.log(1 / (1 + np.exp(-z))) + (1 - t) * np.log(1 - 1 / (1 + np.exp(-z)))))

  class Fixed(nnx.Module):
    def __call__(self, waveform, rngs=None):
      del waveform, rngs
      return {"logits": jnp.asarray(logits, jnp.float32)}

  loss, _ = task.loss(Fixed(), {k: jnp.asarray(v) for k, v in batch.items()}, nnx.Rngs(0))
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_vit_tagger_is_the_encoder_on_the_fbank_in_eval_and_masks_specaugment_at_the_fbank_zero():
  c = audiomae_finetune.get_config("tiny")
  model = tagging.build_tagger(c, 3, nnx.Rngs(0))
  assert isinstance(model, tagging.ViTTagger)
  # The pretraining encoder's layout, with global pool and a head.
  assert model.encoder.embed_dim == 32 and len(model.encoder.blocks) == 1 and model.encoder.global_pool
  model.eval()
  wave = jnp.asarray(np.random.default_rng(1).uniform(-0.5, 0.5, (2, 20800)), jnp.float32)
  out = model(wave)
  ref = model.encoder(model.frontend(wave))
  np.testing.assert_allclose(np.asarray(out["logits"]), np.asarray(ref["logits"]), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.asarray(out["clipwise_output"]), 1 / (1 + np.exp(-np.asarray(ref["logits"],
                                                                                               np.float64))),
                             rtol=1e-5)
  # AudioMAE masks the log-fbank with 0 before (x - mean) / (2 std): the default stripe value.
  mean, std = -6.6268077, 5.358466  # AudioMAE norm_stats['esc50'], the tiny / smoke front end
  assert c.frontend.norm_stats == "esc50"
  assert np.isclose(model.spec_augment["mask_value"], (0.0 - mean) / (2 * std), rtol=1e-6)
  with pytest.raises(ValueError, match="model.name"):
    c2 = audiomae_finetune.get_config("tiny")
    c2.model.name = "resnet"
    tagging.build_tagger(c2, 3, nnx.Rngs(0))
  c3 = audiomae_finetune.get_config("tiny")
  c3.model.name = "cnn14"
  c3.init.linear_probe = True
  with pytest.raises(ValueError, match="needs model.name='vit'"):
    tagging.TaggingTask(c3, "/nonexistent")


def _write_tiny_esc50(root, per_fold=2):
  from data_pipelines.builders import esc50  # pylint: disable=import-outside-toplevel
  (root / "meta").mkdir(parents=True)
  (root / "audio").mkdir()
  rows, rng = [], np.random.default_rng(0)
  for fold in range(1, 6):
    for j in range(per_fold):
      target = (fold * per_fold + j) % 50
      name = f"{fold}-{100 + j}-A-{target}.wav"
      sf.write(root / "audio" / name, rng.uniform(-0.3, 0.3, 4410).astype(np.float32), 44100, subtype="PCM_16")
      rows.append({"filename": name, "fold": fold, "target": target, "category": esc50.ESC50_CATEGORIES[target],
                   "esc10": "False", "src_file": str(100 + j), "take": "A"})
  with open(root / "meta" / "esc50.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  return rows


def test_esc50_test_fold_selects_the_cross_validation_split(tmp_path):
  rows = _write_tiny_esc50(tmp_path / "ESC-50-master")
  c = audiomae_finetune.get_config("esc50")
  c.data.esc50_dir = str(tmp_path)
  c.data.tfds_dir = str(tmp_path / "tfds")
  c.data.test_fold = 3
  ds = tagging.prepare_labeled_audio(c, str(tmp_path))
  names = lambda split: sorted(  # noqa: E731
      e["filename"].decode() for e in tagging.data_source(ds, split))
  assert names("test") == sorted(r["filename"] for r in rows if r["fold"] == 3)
  assert names("train") == sorted(r["filename"] for r in rows if r["fold"] != 3)
  assert len(ds.class_names) == 50
  c.data.test_fold = 0
  with pytest.raises(ValueError, match="test_fold"):
    tagging.prepare_labeled_audio(c, str(tmp_path))


def test_pretrained_encoder_tree_finds_the_student_of_clap_objectives():
  """audiomae / supmam runs keep the ViT at model.encoder; mam_clap / supmam_clap at model.student.encoder (beside
  the frozen teacher, which must never be taken for the encoder)."""
  from uss_jax.tasks.tagging import pretrained_encoder_tree  # pylint: disable=import-outside-toplevel
  enc = {"blocks": {"0": {"w": np.ones(2)}}}
  assert pretrained_encoder_tree({"encoder": enc, "decoder": {}}) is enc
  assert pretrained_encoder_tree({"student": {"encoder": enc, "decoder": {}}, "teacher": {"encoder": {}}}) is enc
  assert pretrained_encoder_tree({"teacher": {"encoder": enc}}) is None
  assert pretrained_encoder_tree({"separator": {}}) is None
