"""Activation sharding constraints, rematerialisation and layer scanning (uss_jax/nn/partitioning.py) on a ViT-B-width
encoder, and the rules table's fallbacks (uss_jax/train/sharding.py).

The model keeps ViT-B's widths (768-d, 12 heads of 64, MLP 3072) with 2 blocks on a 4 x 8 token grid (33 tokens with
cls), batch 8; the loss is the mean squared error of the logits and the tokens against fixed targets. The reference is
the same loss and gradient on ONE device with no context at all (no constraint, no remat, no scan). On 8 fake CPU
devices, meshes (8,1,1), (2,4,1) and (2,2,2) with the project's rules table: parameters placed by their logical names
(on (2,2,2) the fused qkv kernel (D, 3, heads, head_dim) is split over heads on ``tensor``), activation constraints
active at every block boundary (the test reads them back from the traced program: the per-head q / k / v / attention
output on ``tensor``, the batch on (data, fsdp)); loss and every gradient equal the reference.
"""

from __future__ import annotations

import logging

from flax import nnx
import jax
import jax.extend  # noqa: F401  (jax.extend.core.jaxprs_in_params)
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from uss_jax.models import vit
from uss_jax.nn import partitioning
from uss_jax.train import sharding as sh

BATCH, FRAMES, BINS, CLASSES = 8, 64, 128, 8


def _model() -> vit.VisionTransformer:
  return vit.VisionTransformer(img_size=(FRAMES, BINS), patch_size=16, embed_dim=768, depth=2, num_heads=12,
                               num_classes=CLASSES, drop_path=0.0, rngs=nnx.Rngs(0))


def _data():
  rng = np.random.default_rng(0)
  fbank = rng.standard_normal((BATCH, FRAMES, BINS)).astype(np.float32)
  target = rng.standard_normal((BATCH, CLASSES)).astype(np.float32)
  tokens = (0.1 * rng.standard_normal((BATCH, 1 + (FRAMES // 16) * (BINS // 16), 768))).astype(np.float32)
  return fbank, target, tokens


def _loss(graphdef, params, fbank, target, tokens):
  model = nnx.merge(graphdef, params)
  model.eval()
  out = model(fbank)
  return jnp.mean((out["logits"] - target) ** 2) + jnp.mean((out["tokens"] - tokens) ** 2)


def _value_and_grad(graphdef, params, data, mesh=None, remat="none", scan=False, rules=sh.DEFAULT_RULES):
  def fn(p, *d):
    with partitioning.context(mesh, rules, remat=remat, scan_layers=scan):
      return jax.value_and_grad(lambda q: _loss(graphdef, q, *d))(p)
  return jax.jit(fn), fn


@pytest.fixture(scope="session")
def reference():
  """Loss and gradients on one device, no partitioning context."""
  graphdef, params = nnx.split(_model(), nnx.Param)
  data = _data()
  dev = jax.devices()[0]
  params1 = jax.device_put(params, dev)
  loss, grads = jax.jit(jax.value_and_grad(lambda p, *d: _loss(graphdef, p, *d)))(
      params1, *(jax.device_put(d, dev) for d in data))
  return graphdef, jax.tree.map(np.asarray, params), data, float(loss), jax.tree.map(np.asarray, grads)


def _constraint_specs(jaxpr) -> list[tuple[tuple[int, ...], P]]:
  """(shape, spec) of every sharding_constraint in a (closed) jaxpr, nested jaxprs included."""
  found = []

  def walk(jx):
    for eqn in jx.eqns:
      if eqn.primitive.name == "sharding_constraint":
        found.append((tuple(eqn.invars[0].aval.shape), eqn.params["sharding"].spec))
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jaxpr.jaxpr)
  return found


def _spec(array) -> tuple:
  spec = tuple(array.sharding.spec)
  return spec + (None,) * (array.ndim - len(spec))


def _assert_tree_close(got, want, rtol, atol_scale):
  flat_g = jax.tree_util.tree_leaves_with_path(got)
  flat_w = jax.tree.leaves(want)
  assert len(flat_g) == len(flat_w)
  for (path, g), w in zip(flat_g, flat_w):
    g = np.asarray(g)
    assert g.shape == w.shape, path
    scale = max(float(np.abs(w).max()), 1e-30)
    np.testing.assert_allclose(g, w, rtol=rtol, atol=atol_scale * scale, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("axes", [(8, 1, 1), (2, 4, 1), (2, 2, 2)])
def test_vit_b_widths_on_meshes_with_activation_constraints_match_one_device(reference, axes):
  graphdef, params, data, ref_loss, ref_grads = reference
  mesh = sh.create_mesh(dict(zip(sh.MESH_AXES, axes)))
  shardings = sh.state_shardings(nnx.eval_shape(lambda: nnx.split(_model(), nnx.Param)[1]), mesh)
  placed = jax.device_put(params, shardings)
  batch = NamedSharding(mesh, P(("data", "fsdp")))
  data_g = [jax.device_put(d, batch) for d in data]

  qkv = placed["blocks"][0]["attn"]["qkv"]["kernel"][...]
  assert qkv.shape == (768, 3, 12, 64)
  want_qkv = {(8, 1, 1): (None,) * 4, (2, 4, 1): ("fsdp", None, None, None),
              (2, 2, 2): ("fsdp", None, "tensor", None)}[axes]
  assert _spec(qkv) == want_qkv  # tensor parallelism splits whole heads, never the q / k / v selector or head_dim
  fc1 = placed["blocks"][0]["mlp"]["fc1"]["kernel"][...]
  assert _spec(fc1) == {(8, 1, 1): (None, None), (2, 4, 1): ("fsdp", None), (2, 2, 2): ("fsdp", "tensor")}[axes]

  jitted, fn = _value_and_grad(graphdef, placed, data_g, mesh=mesh)
  specs = _constraint_specs(jax.make_jaxpr(fn)(placed, *data_g))
  batch_axes = ("data", "fsdp") if axes[1] > 1 else "data"
  heads_spec = P(batch_axes, None, "tensor", None) if axes[2] > 1 else P(batch_axes, None, None, None)
  # Forward + backward: q / k / v and the attention output of both blocks carry the per-head constraint.
  assert sum(1 for shape, s in specs if shape == (BATCH, 33, 12, 64) and s == heads_spec) >= 2 * 4, specs
  assert any(shape == (BATCH, 33, 768) and s == P(batch_axes, None, None) for shape, s in specs)
  mlp_spec = P(batch_axes, None, "tensor") if axes[2] > 1 else P(batch_axes, None, None)
  assert any(shape == (BATCH, 33, 3072) and s == mlp_spec for shape, s in specs)

  loss, grads = jitted(placed, *data_g)
  np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-6)
  _assert_tree_close(grads, ref_grads, rtol=1e-4, atol_scale=1e-5)


@pytest.mark.parametrize("remat,scan", [("full", False), ("dots", False), ("full", True), ("none", True)])
def test_remat_and_scan_give_the_same_loss_and_gradients(reference, remat, scan):
  graphdef, params, data, ref_loss, ref_grads = reference
  jitted, fn = _value_and_grad(graphdef, params, data, remat=remat, scan=scan)
  jaxpr = jax.make_jaxpr(fn)(params, *data)
  names = set()

  def walk(jx):
    for eqn in jx.eqns:
      names.add(eqn.primitive.name)
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jaxpr.jaxpr)
  remat_used = any(n.startswith("remat") or n == "checkpoint" for n in names)
  assert remat_used == (remat != "none"), names  # the switch took effect
  assert ("scan" in names) == scan, names
  loss, grads = jitted(params, *data)
  np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-6)
  _assert_tree_close(grads, ref_grads, rtol=1e-6, atol_scale=1e-6)


def test_fallback_to_replication_warns_once_per_name_and_unknown_names_fail(caplog):
  mesh = sh.create_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  rules = [("mlp", "tensor"), ("batch", ("data", "fsdp")), ("my_odd_axis", "tensor")]
  sh._WARNED.discard("my_odd_axis")  # pylint: disable=protected-access
  with caplog.at_level(logging.WARNING):
    assert sh.logical_to_spec(("my_odd_axis", None), (3, 4), mesh, rules) == P(None, None)
    assert sh.logical_to_spec(("my_odd_axis",), (5,), mesh, rules) == P(None)
    assert sh.logical_to_spec(("my_odd_axis",), (4,), mesh, rules) == P("tensor")
  warned = [r.getMessage() for r in caplog.records if "'my_odd_axis'" in r.getMessage()]
  assert len(warned) == 1 and "replicated" in warned[0] and "dimension 3" in warned[0], warned
  # Batch 6 on (data, fsdp) = 4 devices: the longest prefix that divides (data = 2) is kept, with the warning.
  sh._WARNED.discard("batch")  # pylint: disable=protected-access
  with caplog.at_level(logging.WARNING):
    assert sh.logical_to_spec(("batch",), (6,), mesh, rules) == P("data")
  assert any("sharded over ('data',) only" in r.getMessage() for r in caplog.records)
  with pytest.raises(sh.UnknownLogicalAxisError, match="'emebd'"):
    sh.logical_to_spec(("emebd", None), (8, 8), mesh, rules)
  # The same error from an activation constraint inside a model's traced code.
  with pytest.raises(sh.UnknownLogicalAxisError, match="'emebd'"):
    with partitioning.context(mesh, rules):
      jax.jit(lambda x: partitioning.constrain(x, ("batch", "emebd")))(jnp.zeros((8, 8)))


def test_one_rules_table():
  """configs/common.py copies THE table of uss_jax/train/sharding.py and holds no second list of rules."""
  import inspect  # pylint: disable=import-outside-toplevel
  from configs import common  # pylint: disable=import-outside-toplevel
  source = inspect.getsource(common)
  assert '("embed"' not in source and "('embed'" not in source and '"conv_out"' not in source
  assert [tuple(r) for r in common.base_config().sharding_rules] == [tuple(r) for r in sh.DEFAULT_RULES]
