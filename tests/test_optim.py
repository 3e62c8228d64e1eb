"""Learning-rate schedules and optimizers named in configs (uss_jax/train/optim.py) against hand values."""

import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from uss_jax.train import optim


def test_uss_step_schedule_matches_the_reference_warm_up():
  # bytedance/uss get_lr_lambda: x0.001 below 10k steps, x0.01 below 20k, x0.1 below 30k, then x1.
  sched = optim.make_schedule({"name": "step", "boundaries": [10_000, 20_000, 30_000],
                               "factors": [0.001, 0.01, 0.1, 1.0]}, peak=1e-3, total_steps=10**6)
  for step, factor in [(0, 0.001), (9_999, 0.001), (10_000, 0.01), (25_000, 0.1), (30_000, 1.0), (999_999, 1.0)]:
    assert math.isclose(float(sched(step)), 1e-3 * factor, rel_tol=1e-6), step


def test_warmup_half_cycle_cosine_matches_the_mae_formula():
  peak, warm, total = 4e-4, 10, 110
  sched = optim.make_schedule({"name": "warmup_cosine", "warmup_steps": warm}, peak=peak, total_steps=total)
  for step in [0, 5, 10, 35, 60, 109]:
    if step < warm:
      expected = peak * step / warm
    else:  # MAE util/lr_sched.py: lr * 0.5 * (1 + cos(pi * (step - warmup) / (total - warmup)))
      expected = peak * 0.5 * (1 + math.cos(math.pi * (step - warm) / (total - warm)))
    assert math.isclose(float(sched(step)), expected, rel_tol=1e-5, abs_tol=1e-9), step


def test_amsgrad_adamw_with_clipping_matches_a_numpy_step():
  tx, _ = optim.make_optimizer({"name": "adamw", "learning_rate": 0.1, "amsgrad": True, "weight_decay": 0.5,
                                "grad_clip_norm": 1.0}, {"name": "constant"}, total_steps=10)
  p = {"w": jnp.array([1.0, 3.0])}
  g = {"w": jnp.array([3.0, 4.0])}  # norm 5 -> clipped to norm 1
  state = tx.init(p)
  updates, state = tx.update(g, state, p)
  gc = np.array([0.6, 0.8])
  m, v = 0.1 * gc, 0.001 * gc**2
  m_hat, v_hat = m / (1 - 0.9), v / (1 - 0.999)
  expected = -0.1 * (m_hat / (np.sqrt(v_hat) + 1e-8) + 0.5 * np.array([1.0, 3.0]))
  np.testing.assert_allclose(np.asarray(updates["w"]), expected, rtol=1e-5)


def test_bad_names_raise_clear_errors():
  with pytest.raises(ValueError, match="config.schedule.name"):
    optim.make_schedule({"name": "linear-ish"}, 1.0, 10)
  with pytest.raises(ValueError, match="config.optimizer.name"):
    optim.make_optimizer({"name": "lamb"}, {"name": "constant"}, 10)
  with pytest.raises(ValueError, match="len\\(factors\\)"):
    optim.make_schedule({"name": "step", "boundaries": [1], "factors": [1.0]}, 1.0, 10)
  assert isinstance(optim.make_optimizer({"name": "sgd"}, {"name": "constant"}, 10)[0],
                    optax.GradientTransformation)


# ---- layer-wise LR decay and weight-decay selection (AudioMAE fine-tuning) ----


def _audiomae_param_groups(names_and_ndims, depth, layer_decay, weight_decay, no_weight_decay_list):
  """MAE / AudioMAE util/lr_decay.py param_groups_lrd, re-derived on timm names: name -> (lr_scale, weight_decay)."""
  num_layers = depth + 1
  layer_scales = [layer_decay ** (num_layers - i) for i in range(num_layers + 1)]

  def layer_id(name):  # get_layer_id_for_vit
    if name in ("cls_token", "pos_embed"):
      return 0
    if name.startswith("patch_embed"):
      return 0
    if name.startswith("blocks"):
      return int(name.split(".")[1]) + 1
    return num_layers

  out = {}
  for name, ndim in names_and_ndims:
    decay = 0.0 if ndim == 1 or name in no_weight_decay_list else weight_decay
    out[name] = (layer_scales[layer_id(name)], decay)
  return out


def _timm_name(names):
  """Our path -> the timm key (kernel / scale -> weight), e.g. blocks/0/attn/qkv/kernel -> blocks.0.attn.qkv.weight."""
  leaf = {"kernel": "weight", "scale": "weight"}.get(names[-1], names[-1])
  return ".".join(list(names[:-1]) + [leaf])


def _vit_params(depth=3, prefix=None):
  from flax import nnx
  from uss_jax.models import vit
  model = vit.VisionTransformer(img_size=(64, 32), patch_size=16, embed_dim=16, depth=depth, num_heads=2,
                                num_classes=5, pos_embed="learned", rngs=nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  return model, ({prefix: params} if prefix else params)


@pytest.mark.parametrize("prefix", [None, "encoder"])
def test_layer_decay_scales_follow_audiomae_param_groups_lrd(prefix):
  import jax
  from uss_jax.convert import audiomae
  model, params = _vit_params(depth=3, prefix=prefix)
  scales = optim.layer_decay_scales(params, 0.75)
  mask = optim.vit_weight_decay_mask(params)
  got = {}
  for (path, s), (_, m), (_, p) in zip(jax.tree_util.tree_leaves_with_path(scales),
                                       jax.tree_util.tree_leaves_with_path(mask),
                                       jax.tree_util.tree_leaves_with_path(params)):
    names = [n for n in optim.path_names(path) if n != "value"]
    names = names[1:] if prefix else names
    got[_timm_name(names)] = (s, 0.05 if m else 0.0, p.ndim)
  # Our paths name exactly the timm parameters of this ViT (the AudioMAE converter's key list).
  assert set(got) == set(audiomae.torch_shapes(model))
  ref = _audiomae_param_groups([(n, v[2]) for n, v in got.items()], depth=3, layer_decay=0.75, weight_decay=0.05,
                               no_weight_decay_list={"pos_embed", "cls_token", "dist_token"})
  for name, (scale, wd, _) in got.items():
    assert math.isclose(scale, ref[name][0], rel_tol=1e-12) and wd == ref[name][1], (name, scale, wd, ref[name])
  # Spot values: head 1, last block 0.75, first block 0.75^3, embeddings 0.75^4.
  assert got["head.weight"][0] == 1.0 and got["blocks.2.attn.qkv.weight"][0] == 0.75
  assert got["blocks.0.mlp.fc1.bias"][0] == 0.75 ** 3 and got["cls_token"][0] == 0.75 ** 4
  assert got["patch_embed.proj.weight"][1] == 0.05 and got["cls_token"][1] == 0.0 and got["pos_embed"][1] == 0.0


def test_layer_decay_adamw_step_matches_per_group_torch_adamw():
  """One make_optimizer step with layer_decay = PyTorch AdamW with per-group lr = lr * scale and per-group decay."""
  import jax
  _, params = _vit_params(depth=2)
  lr, wd, decay = 0.01, 0.1, 0.5
  tx, _ = optim.make_optimizer({"name": "adamw", "learning_rate": lr, "weight_decay": wd, "layer_decay": decay},
                               {"name": "constant"}, total_steps=10, weight_decay_mask=optim.vit_weight_decay_mask)
  grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.3, p.dtype) + 0.01 * p, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  checked = 0
  for (path, u), (_, g), (_, p) in zip(jax.tree_util.tree_leaves_with_path(updates),
                                       jax.tree_util.tree_leaves_with_path(grads),
                                       jax.tree_util.tree_leaves_with_path(params)):
    name = _timm_name([n for n in optim.path_names(path) if n != "value"])
    scale, group_wd = _audiomae_param_groups([(name, p.ndim)], depth=2, layer_decay=decay, weight_decay=wd,
                                             no_weight_decay_list={"pos_embed", "cls_token"})[name]
    g, p = np.asarray(g, np.float64), np.asarray(p, np.float64)
    m_hat, v_hat = g, g ** 2  # first step: bias-corrected moments are g and g^2
    expected = -lr * scale * (m_hat / (np.sqrt(v_hat) + 1e-8) + group_wd * p)
    np.testing.assert_allclose(np.asarray(u), expected, rtol=2e-5, atol=1e-9, err_msg=name)
    checked += 1
  assert checked == len(jax.tree.leaves(params))
  with pytest.raises(ValueError, match="layer_decay"):
    optim.make_optimizer({"name": "adamw", "layer_decay": 1.5}, {"name": "constant"}, 10)
