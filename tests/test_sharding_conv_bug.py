"""The "7 % gradient error with conv kernels sharded on two axes": an XLA SPMD-partitioner miscompile, reduced to one
matmul, documented as strict known failures, and the project's rules checked to stay clear of it.

History: with ``conv_in -> fsdp`` and ``conv_out -> tensor`` a 6-block Cnn14 on a (2, 2, 2) mesh trained with
gradients up to 7 % off while the loss was right; the rules were changed to shard conv kernels on one axis.

Cause (jax / jaxlib 0.10.2, XLA:CPU; both the Shardy and the GSPMD propagation give it, so it sits in the shared SPMD
partitioner's dot / convolution handler). Smallest reproducer, no convolution needed:

    mesh (data=2, fsdp=2, tensor=2)
    y = x @ w      x (8, 8) P(('data', 'fsdp'), 'tensor')     w (8, 8) P('tensor', 'fsdp')
                   out_shardings P(('data', 'fsdp'), 'tensor')

i.e. the contraction on ``tensor`` in both operands, ``w``'s output features on ``fsdp`` -- the MINOR axis of the
batch's (data, fsdp) tuple -- and the result wanted with its features on ``tensor``. The partitioned program
collective-permutes ``x`` between devices 2 <-> 4 and 3 <-> 5 (to match ``w``'s transposed device order), does the
local dot, all-reduces over ``tensor`` and slices, but never permutes back: rows 2-3 and 4-5 of the result are
swapped (relative error ~1.3 against a float64 numpy reference). With ``w`` on (tensor, data), on a 2-axis mesh (batch
on fsdp only), or with the result's features replicated, the same product is right to 1e-7.

A convolution hits the same handler: ``conv(x, k)`` with ``x`` (batch on (data, fsdp), channels on ``tensor``) and
``k`` (kh, kw, in on ``tensor``, out on ``fsdp``). In Cnn14 this shape arises in the BACKWARD pass: the
input-gradient convolution of ``conv2`` uses the kernel transposed (its ``conv_in`` axis becomes the output features),
and BatchNorm keeps the cotangents' channels on ``tensor`` (``conv_out``). So ``conv_in -> fsdp`` is enough to trigger
it; ``conv_out`` alone on ``tensor`` (the project's rule) is not. Two convolutions with BatchNorm between them
reproduce it (below); without BatchNorm propagation chooses other shardings and the gradients are right.

The upstream fix belongs in XLA (``spmd/dot_handler.cc``); until then ``DEFAULT_RULES`` shard conv kernels on
``conv_out`` only and ``test_project_rules_stay_clear`` guards that choice on the real Cnn14.
"""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from uss_jax.models import cnn14
from uss_jax.train import sharding as sh

BATCH = ("data", "fsdp")


def _mesh() -> Mesh:
  return sh.create_mesh({"data": 2, "fsdp": 2, "tensor": 2})


def _rel(got, want) -> float:
  return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


def _matmul(w_spec: P, out_spec: P) -> float:
  mesh = _mesh()
  rng = np.random.default_rng(0)
  x = rng.standard_normal((8, 8)).astype(np.float32)
  w = rng.standard_normal((8, 8)).astype(np.float32)
  f = jax.jit(jnp.dot, in_shardings=(NamedSharding(mesh, P(BATCH, "tensor")), NamedSharding(mesh, w_spec)),
              out_shardings=NamedSharding(mesh, out_spec))
  return _rel(f(x, w), x.astype(np.float64) @ w.astype(np.float64))


def test_matmul_controls_are_right():
  """The neighbours of the failing case match float64 numpy to float32 precision."""
  assert _matmul(P("tensor", "data"), P(BATCH, "tensor")) < 1e-6  # w's features on the major batch axis
  assert _matmul(P("tensor", "fsdp"), P(BATCH, None)) < 1e-6  # result's features replicated
  assert _matmul(P("tensor", None), P(BATCH, "tensor")) < 1e-6  # w sharded on one axis


@pytest.mark.xfail(strict=True, reason="XLA SPMD partitioner (jaxlib 0.10.2): x P((data,fsdp),tensor) @ "
                   "w P(tensor,fsdp) -> P((data,fsdp),tensor) swaps batch rows 2-3 / 4-5 (module docstring)")
def test_matmul_with_rhs_features_on_the_minor_batch_axis():
  assert _matmul(P("tensor", "fsdp"), P(BATCH, "tensor")) < 1e-6


def _conv(x, k):
  return jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _bn(h):
  m = h.mean((0, 1, 2))
  return (h - m) / jnp.sqrt(((h - m) ** 2).mean((0, 1, 2)) + 1e-5)


def _two_conv_grads(kernel_spec: P) -> float:
  """Worst relative error of d(loss)/d(x, k1, k2) for conv -> BN -> relu -> conv -> BN against float64 on 1 device."""
  mesh = _mesh()
  rng = np.random.default_rng(0)
  x = rng.standard_normal((8, 2, 8, 8)).astype(np.float32)
  k1, k2 = ((rng.standard_normal((3, 3, 8, 8)) / np.sqrt(72)).astype(np.float32) for _ in range(2))
  t = rng.standard_normal((8, 2, 8, 8)).astype(np.float32)

  def loss(x, k1, k2, t):
    return jnp.sum(_bn(_conv(jax.nn.relu(_bn(_conv(x, k1))), k2)) * t)

  grad = jax.grad(loss, argnums=(0, 1, 2))
  with jax.enable_x64(True):
    ref = [np.asarray(g) for g in jax.jit(grad)(*(a.astype(np.float64) for a in (x, k1, k2, t)))]
  ks = NamedSharding(mesh, kernel_spec)
  args = (jax.device_put(x, NamedSharding(mesh, P(BATCH))), jax.device_put(k1, ks), jax.device_put(k2, ks),
          jax.device_put(t, NamedSharding(mesh, P(BATCH))))
  return max(_rel(g, r) for g, r in zip(jax.jit(grad)(*args), ref))


def test_conv_kernels_on_one_axis_are_right():
  assert _two_conv_grads(P(None, None, None, "tensor")) < 1e-5  # the project's rule: conv_out -> tensor
  assert _two_conv_grads(P()) < 1e-5


@pytest.mark.xfail(strict=True, reason="XLA SPMD partitioner (jaxlib 0.10.2): the input-gradient convolution with the "
                   "kernel's conv_in on fsdp and cotangent channels on tensor swaps batch rows (module docstring)")
def test_conv_kernels_on_two_axes():
  assert _two_conv_grads(P(None, None, "fsdp", "tensor")) < 1e-5


def _cnn14_grads(rules):
  chans = (8, 8, 8, 8)
  make = lambda: cnn14.Cnn14(num_classes=8, channels=chans, head="decision_max", spec_augment=False, dropout=0.0,
                             head_dropout=0.0, frontend=None, rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(make(), nnx.Param, ...)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((8, 16, 64)).astype(np.float32)
  y = (rng.random((8, 8)) < 0.3).astype(np.float32)

  def loss(p, r, x, y):  # train mode: BatchNorm over the global batch
    return jnp.mean((nnx.merge(graphdef, p, r).from_logmel(x)["clipwise_output"] - y) ** 2)

  grad = jax.jit(lambda *a: jax.grad(loss, argnums=(0, 1))(*a)[0])
  ref = jax.tree.map(np.asarray, jax.jit(lambda *a: jax.grad(loss, argnums=(0, 1))(*a)[0])(
      *jax.device_put((params, rest, x, y), jax.devices()[0])))
  mesh = _mesh()
  shardings = sh.state_shardings(nnx.eval_shape(lambda: nnx.split(make(), nnx.Param, ...)[1]), mesh, rules)
  got = grad(jax.device_put(params, shardings), jax.device_put(rest, NamedSharding(mesh, P())),
             jax.device_put(x, sh.batch_sharding(mesh)), jax.device_put(y, sh.batch_sharding(mesh)))
  return max(_rel(g, r) for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref)))


def test_project_rules_stay_clear():
  """A 4-block Cnn14 (BatchNorm in train mode, 16 frames: 2 x 8 maps in the last block) on (2, 2, 2) with the
  project's rules has the 1-device gradients (float32 on both sides)."""
  assert _cnn14_grads(None) < 1e-5


@pytest.mark.xfail(strict=True, reason="conv_in -> fsdp with conv_out -> tensor hits the XLA miscompile above")
def test_cnn14_with_conv_kernels_on_two_axes():
  assert _cnn14_grads([("conv_in", "fsdp")]) < 1e-5
