"""Device mesh, logical-axis rules and global batches.

Every parameter carries logical axis names (``nnx.with_partitioning`` metadata, read here as ``out_sharding``) and
activations pass ``uss_jax.nn.partitioning.constrain`` with names of the same vocabulary; ONE rules table
(``DEFAULT_RULES``, copied into every config as ``config.sharding_rules``, where entries can be overridden) maps each
logical name onto at most three mesh axes ``data``, ``fsdp``, ``tensor`` (the maxtext / big_vision scheme). The same
config therefore runs on one CPU, a multi-GPU host, several hosts or a TPU pod: only the mesh shape changes, and
``-1`` in the config takes whatever devices are left.

Resolution of one array's names (``logical_to_spec``): mesh axes of size 1 drop out; a mesh axis already taken by an
earlier dimension of the same array is not reused (so the residual ``embed`` of an activation whose batch already
sits on ``fsdp`` stays whole, and ``('embed', 'embed')`` shards one side only); when the dimension is not divisible
by the product of its axes, the longest prefix of them that divides it is used, else the dimension is replicated --
a fallback logged as a warning once per logical name (tiny test models, a first convolution with one input
channel): correctness never depends on the rules, only memory and speed do. A name that is not in the table is an
error (``UnknownLogicalAxisError``): a typo would otherwise replicate silently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import logging
import math
from typing import Any

import jax
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

MESH_AXES = ("data", "fsdp", "tensor")

# THE rules table: logical name -> mesh axes (None = replicated). configs/common.py copies it into
# config.sharding_rules; a config or the command line may override entries there.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),  # examples (activations, the global batch)
    ("embed", "fsdp"),  # model width: weights' residual dimension (FSDP); activations keep it whole after batch
    ("mlp", "tensor"),  # MLP hidden units (weights and activations)
    ("heads", "tensor"),  # attention heads: q / k / v / output projections and per-head activations
    ("kv", None),  # per-head feature (head_dim): never split, so tensor parallelism splits whole heads
    ("qkv", None),  # the q / k / v selector of a fused projection (size 3)
    # Convolution kernels are sharded along one axis only: XLA's SPMD partitioner (jaxlib 0.10.2) miscompiles a
    # dot / convolution whose lhs has its batch on (data, fsdp) and its contraction on 'tensor' when the rhs has its
    # output features on 'fsdp' and the result's features go on 'tensor' (it collective-permutes the lhs between
    # devices and never permutes back: batch rows of different devices are swapped). conv_in -> fsdp creates exactly
    # that in Cnn14's input-gradient convolutions (gradients up to 100 % off, the loss right); reproducers down to a
    # single 8 x 8 matmul: tests/test_sharding_conv_bug.py (strict xfails) and a guard that these rules stay clear.
    ("conv_in", None),
    ("conv_out", "tensor"),
    ("classes", None),
    ("vocab", "tensor"),
    ("length", None),  # tokens / frames / samples
)


class UnknownLogicalAxisError(ValueError):
  """A logical axis name that the rules table does not know."""


def mesh_shape(mesh_config: Mapping[str, int], num_devices: int) -> tuple[int, int, int]:
  """Resolves ``{'data': -1, 'fsdp': 2, 'tensor': 1}`` to a concrete shape over ``num_devices``.

  Raises:
    ValueError: unknown axis name, more than one ``-1``, or sizes whose product does not equal ``num_devices``.
  """
  unknown = set(mesh_config) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"config.mesh: unknown axes {sorted(unknown)}; expected a subset of {MESH_AXES}")
  sizes = [int(mesh_config.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f"config.mesh {dict(zip(MESH_AXES, sizes))}: {num_devices} devices are not divisible by {known}")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f"config.mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, {num_devices} present")
  return tuple(sizes)  # type: ignore[return-value]


def create_mesh(mesh_config: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ``Mesh`` with axes (data, fsdp, tensor) over all devices (or ``devices``), process-major device order.

  Uses ``mesh_utils.create_device_mesh`` so the ``tensor`` axis lands on the fastest interconnect (ICI on TPU, NVLink on
  a GPU host) and, across hosts, ``create_hybrid_device_mesh`` keeps ``data`` on the slow (DCN) axis. Axis types are
  ``Auto`` (convolutions under ``Explicit`` axes demand ``out_sharding`` everywhere; see FACTS.md).
  """
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(mesh_config, len(devices))
  num_slices = len({getattr(d, "slice_index", 0) for d in devices})
  if num_slices > 1 and shape[0] % num_slices == 0:
    dcn = (num_slices, 1, 1)
    ici = (shape[0] // num_slices, shape[1], shape[2])
    device_array = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
  else:
    try:
      device_array = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    except (ValueError, NotImplementedError, AssertionError):
      device_array = np.asarray(devices).reshape(shape)
  return Mesh(device_array, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def _rules_dict(rules: Sequence[tuple[str, Any]] | None) -> dict[str, Any]:
  table = dict(DEFAULT_RULES)
  for name, axes in rules or ():
    table[name] = tuple(axes) if isinstance(axes, list) else axes
  return table


_WARNED: set[str] = set()


def _warn_once(name: str, message: str) -> None:
  if name not in _WARNED:
    _WARNED.add(name)
    logging.warning("%s (logged once per logical name)", message)


def logical_to_spec(names: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh,
                    rules: Sequence[tuple[str, Any]] | None = None) -> P:
  """Maps logical axis names of an array of ``shape`` to a ``PartitionSpec`` on ``mesh`` (module docstring).

  Mesh axes of size 1 are dropped; a mesh axis already used by an earlier dimension is not reused; a dimension not
  divisible by the product of its mesh axes takes the longest prefix of them that divides it, else is replicated
  (a warning, once per logical name).

  Raises:
    UnknownLogicalAxisError: a name that is neither ``None`` nor in the rules table.
  """
  if not names:
    return P()
  table = _rules_dict(rules)
  used: set[str] = set()
  spec = []
  for dim, name in zip(shape, names):
    if name is None:
      spec.append(None)
      continue
    if name not in table:
      raise UnknownLogicalAxisError(
          f"unknown logical axis name {name!r} (array shape {tuple(shape)}, names {tuple(names)}); known: "
          f"{', '.join(sorted(table))}; add a rule for it to config.sharding_rules")
    axes = table[name]
    if axes is None:
      spec.append(None)
      continue
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    axes = tuple(a for a in axes if mesh.shape[a] > 1 and a not in used)
    if not axes:
      spec.append(None)
      continue
    fitted = axes
    while fitted and dim % math.prod(mesh.shape[a] for a in fitted):
      fitted = fitted[:-1]
    if fitted != axes:
      size = math.prod(mesh.shape[a] for a in axes)
      _warn_once(name, f"sharding rule {name!r} -> {axes}: dimension {dim} of shape {tuple(shape)} is not divisible "
                       f"by {size} devices; " + (f"sharded over {fitted} only" if fitted else "replicated"))
    if not fitted:
      spec.append(None)
      continue
    used.update(fitted)
    spec.append(fitted[0] if len(fitted) == 1 else fitted)
  return P(*spec)


def _names_of(leaf: Any) -> Sequence[str | None] | None:
  meta = leaf.get_metadata() if hasattr(leaf, "get_metadata") else {}
  return meta.get("out_sharding") or meta.get("sharding_names") or meta.get("sharding")


def state_shardings(abstract_state: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]] | None = None) -> Any:
  """``NamedSharding`` for every leaf of an (abstract) ``nnx.State``, from its logical names.

  The result has the state's tree structure (each ``nnx.Variable`` holds its sharding as value), so it serves as
  ``jit`` in/out shardings and can be zipped with the state in ``jax.tree.map``. Optimizer moments inherit their
  parameter's names (optax states mirror the parameter tree and nnx keeps the metadata), so Adam's state is sharded
  like the weights.
  """
  from flax import nnx

  def to_sharding(leaf):
    if isinstance(leaf, nnx.Variable):
      shape = getattr(leaf.get_value(), "shape", ())
      return leaf.replace(NamedSharding(mesh, logical_to_spec(_names_of(leaf), shape, mesh, rules)))
    return NamedSharding(mesh, P())

  return jax.tree.map(to_sharding, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, rules: Sequence[tuple[str, Any]] | None = None) -> NamedSharding:
  """Sharding of a batch: leading axis over the mesh axes of the ``batch`` rule (default data x fsdp)."""
  axes = _rules_dict(rules).get("batch", ("data", "fsdp"))
  axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
  axes = tuple(a for a in axes if mesh.shape[a] > 1)
  return NamedSharding(mesh, P(axes if axes else None))


def batch_divisor(mesh: Mesh, rules: Sequence[tuple[str, Any]] | None = None) -> int:
  """Number of shards of the batch axis: the global batch must be a multiple of it."""
  spec = batch_sharding(mesh, rules).spec[0]
  if spec is None:
    return 1
  axes = (spec,) if isinstance(spec, str) else spec
  return math.prod(mesh.shape[a] for a in axes)


def host_batch_rows(global_batch: int, process_index: int | None = None, process_count: int | None = None) -> slice:
  """Rows of the global batch that this process loads: contiguous, process-major (matches ``create_mesh``)."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if global_batch % process_count:
    raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
  per_host = global_batch // process_count
  return slice(process_index * per_host, (process_index + 1) * per_host)


def make_global_batch(local_batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Assembles per-host numpy shards into global ``jax.Array``s (``jax.make_array_from_process_local_data``)."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}
