"""SupMAM / AudioMAE pretraining step of a ViT-B-width model on 8 fake CPU devices: same losses as one device, and
parameters sharded as the config's rules say.

The step is the trainer's own (``trainer.build_run`` on ``configs/supmam.py:tiny`` with the demo dataset): Kaldi fbank
front end, random masking (40 %), ViT encoder, Swin decoder, reconstruction + SupMAM branch (BatchNorm over the global
batch), AdamW. To fit the 2-core budget the model keeps ViT-B's widths (768-d, 12 heads, MLP 3072; decoder 512-d,
16 heads, window (4, 4), shifted by (2, 0); branch 3072 hidden) but only 1 of the 12 encoder blocks and 1 of the 16
decoder blocks (the shifted kind, which exercises the roll and the mask), on 128 frames x 128 mel bins (8 x 8 tokens)
instead of 1024 x 128. The full-size model (12 + 16 blocks) at 128 frames takes ~70 s to initialise and compile on one
device of this machine and ~3.5 s per step after, too slow for the suite.
The initial state is made once on one device and placed on each mesh with that run's shardings.
"""

import jax
import numpy as np
import pytest

from configs import supmam
from uss_jax.train import sharding as sh
from uss_jax.train import trainer

STEPS = 2
RULES = {"embed": "fsdp", "mlp": "tensor", "heads": "tensor", "classes": None}


def _config(tfds_dir, axes=(1, 1, 1)):
  c = supmam.get_config("tiny")
  c.data.tfds_dir = tfds_dir
  c.model.encoder = {"size": "base", "depth": 1, "patch_size": 16}
  c.model.decoder = {"preset": "audiomae_swin", "depth": 1, "shift_blocks": "all"}
  c.supmam.hidden = 3072
  c.optimizer.learning_rate = 1e-3  # constant, so the second step's loss reflects a real AdamW update
  c.schedule.name = "constant"
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = axes
  return c


def _batch(num_classes):
  rng = np.random.default_rng(0)
  labels = np.zeros((8, num_classes), np.float32)
  labels[np.arange(8), np.arange(8) % num_classes] = 1
  labels[0, 1] = 1  # one multi-label row
  return {"waveform": (0.1 * rng.standard_normal((8, 20800))).astype(np.float32), "labels": labels,
          "label": (np.arange(8) % num_classes).astype(np.int32)}


def _train(run, state, local):
  batch = sh.make_global_batch(local, run.batch_sharding)
  history = []
  for _ in range(STEPS):
    state, out = run.train_step(state, batch)
    history.append([float(out[k]) for k in ("loss", "rec_loss", "cls_loss")])
  return np.array(history)


@pytest.fixture(scope="session")
def reference(demo_tfds, tmp_path_factory):
  config = _config(demo_tfds)
  mesh = sh.create_mesh(dict(config.mesh), devices=jax.devices()[:1])
  run = trainer.build_run(config, str(tmp_path_factory.mktemp("mam1")), mesh=mesh)
  state = run.init()
  initial = jax.tree.map(np.asarray, state)
  local = _batch(len(run.task.class_names))
  return initial, local, _train(run, state, local)


QKV = ("embed", "qkv", "heads", "kv")  # uss_jax.nn.attention.FusedQKV kernel names


def _spec(array):
  spec = tuple(array.sharding.spec)
  return spec + (None,) * (array.ndim - len(spec))


def _expected(names, axes):
  """The config's rules applied by hand: a logical name -> its mesh axis if that axis has more than one device."""
  size = dict(zip(("data", "fsdp", "tensor"), axes))
  out = []
  for name in names:
    axis = RULES.get(name)
    out.append(axis if axis is not None and size[axis] > 1 and axis not in out else None)
  return tuple(out)


@pytest.mark.parametrize("axes", [(8, 1, 1), (1, 8, 1), (2, 1, 4)])
def test_vit_b_step_matches_one_device_and_shards_by_rules(reference, demo_tfds, tmp_path, axes):
  initial, local, ref_history = reference
  config = _config(demo_tfds, axes)
  for name, axis in RULES.items():  # the rules this test expects are the config's
    assert (name, axis) in [tuple(r) for r in config.sharding_rules]
  run = trainer.build_run(config, str(tmp_path))
  assert dict(run.mesh.shape) == dict(zip(("data", "fsdp", "tensor"), axes))
  state = jax.device_put(initial, run.state_shardings)

  model = state["model"]
  enc, dec, cls = model["encoder"]["blocks"][0], model["decoder"]["blocks"][0], model["classifier"]
  kernels = {
      "encoder qkv": (enc["attn"]["qkv"]["kernel"], QKV, (768, 3, 12, 64)),
      "encoder proj": (enc["attn"]["proj"]["kernel"], ("heads", "embed"), (768, 768)),
      "encoder mlp fc1": (enc["mlp"]["fc1"]["kernel"], ("embed", "mlp"), (768, 3072)),
      "encoder mlp fc2": (enc["mlp"]["fc2"]["kernel"], ("mlp", "embed"), (3072, 768)),
      "decoder qkv": (dec["attn"]["qkv"]["kernel"], QKV, (512, 3, 16, 32)),
      "decoder mlp fc1": (dec["mlp"]["fc1"]["kernel"], ("embed", "mlp"), (512, 2048)),
      "decoder mlp fc2": (dec["mlp"]["fc2"]["kernel"], ("mlp", "embed"), (2048, 512)),
      "decoder_embed": (model["decoder"]["decoder_embed"]["kernel"], ("embed", "embed"), (768, 512)),
      "branch fc1": (cls["fc1"]["kernel"], ("embed", "mlp"), (768, 3072)),
      "branch fc2": (cls["fc2"]["kernel"], ("mlp", "classes"), (3072, 19)),
  }
  for what, (var, names, shape) in kernels.items():
    arr = var[...]
    assert arr.shape == shape, what
    assert _spec(arr) == _expected(names, axes), what
  # Spot values: data-only replicates everything; fsdp puts 'embed' on fsdp; data x tensor puts mlp / heads on tensor.
  qkv = enc["attn"]["qkv"]["kernel"][...]
  # (D, 3, heads, head_dim): tensor parallelism splits whole heads, never the q / k / v selector or head_dim.
  assert _spec(qkv) == {(8, 1, 1): (None,) * 4, (1, 8, 1): ("fsdp", None, None, None),
                        (2, 1, 4): (None, None, "tensor", None)}[axes]
  assert len(qkv.sharding.device_set) == 8

  history = _train(run, state, local)
  assert np.all(np.isfinite(ref_history)) and ref_history[1, 0] != ref_history[0, 0]
  np.testing.assert_allclose(history, ref_history, rtol=1e-5, atol=1e-6)
