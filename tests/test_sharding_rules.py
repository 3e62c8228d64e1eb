"""Mesh resolution and logical-axis rules (uss_jax/train/sharding.py)."""

import jax
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from uss_jax.train import sharding as sh


def test_mesh_shape_resolves_minus_one_and_rejects_bad_configs():
  assert sh.mesh_shape({"data": -1, "fsdp": 2, "tensor": 1}, 8) == (4, 2, 1)
  assert sh.mesh_shape({"data": 2, "fsdp": -1, "tensor": 2}, 8) == (2, 2, 2)
  with pytest.raises(ValueError, match="at most one axis"):
    sh.mesh_shape({"data": -1, "fsdp": -1}, 8)
  with pytest.raises(ValueError, match="needs 4 devices, 8 present"):
    sh.mesh_shape({"data": 2, "fsdp": 2, "tensor": 1}, 8)
  with pytest.raises(ValueError, match="unknown axes"):
    sh.mesh_shape({"model": 2}, 8)


def test_logical_to_spec_follows_rules_and_replicates_indivisible_dims():
  mesh = sh.create_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  rules = [("embed", "fsdp"), ("mlp", "tensor"), ("batch", ("data", "fsdp"))]
  assert sh.logical_to_spec(("embed", "mlp"), (8, 16), mesh, rules) == P("fsdp", "tensor")
  # 3 is not divisible by the 2 fsdp shards -> replicated on that dim.
  assert sh.logical_to_spec(("embed", "mlp"), (3, 16), mesh, rules) == P(None, "tensor")
  # A mesh axis is never used twice in one spec.
  assert sh.logical_to_spec(("mlp", "mlp"), (4, 4), mesh, rules) == P("tensor", None)
  assert sh.logical_to_spec(("batch", None), (8, 5), mesh, rules) == P(("data", "fsdp"), None)
  assert sh.logical_to_spec(None, (8,), mesh, rules) == P()
  # Size-1 mesh axes drop out.
  mesh1 = sh.create_mesh({"data": 8, "fsdp": 1, "tensor": 1})
  assert sh.logical_to_spec(("embed", "mlp"), (8, 16), mesh1, rules) == P(None, None)
  assert sh.batch_divisor(mesh, rules) == 4 and sh.batch_divisor(mesh1, rules) == 8


def test_global_batch_assembly_matches_local_data():
  mesh = sh.create_mesh({"data": 4, "fsdp": 2, "tensor": 1})
  x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
  g = sh.make_global_batch({"x": x}, sh.batch_sharding(mesh))["x"]
  np.testing.assert_array_equal(np.asarray(g), x)
  assert g.sharding.spec == P(("data", "fsdp"))
  # Each device holds 2 contiguous rows.
  shard_rows = sorted(int(s.index[0].start) for s in g.addressable_shards)
  assert shard_rows == list(range(0, 16, 2))
  assert sh.host_batch_rows(16, 1, 2) == slice(8, 16)
  with pytest.raises(ValueError):
    sh.host_batch_rows(15, 0, 2)
  assert len(jax.devices()) == 8
