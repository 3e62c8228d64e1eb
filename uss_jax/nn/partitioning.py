"""Activation sharding constraints, rematerialisation and layer scanning, switched by the context the trainer sets.

Models call three functions at their block boundaries and stay mesh-agnostic:

* ``constrain(x, names)``: ``jax.lax.with_sharding_constraint`` of ``x`` to the ``PartitionSpec`` that the ONE rules
  table (``uss_jax.train.sharding.DEFAULT_RULES`` / ``config.sharding_rules``) gives its logical ``names`` on the
  current mesh, e.g. ``constrain(x, ("batch", "length", "embed"))`` for a residual stream, ``("batch", "length",
  "heads", "kv")`` for per-head queries (so tensor parallelism splits whole heads), ``("batch", "length", "mlp")``
  for MLP hidden units, ``("batch", None, None, "conv_out")`` for a channels-last feature map. Outside a context (a
  model called directly, anchor mining, inference) it returns ``x`` unchanged.
* ``remat(fn)``: ``fn(module, *args)`` wrapped in ``nnx.remat`` with the context's policy (``REMAT_POLICIES``), or
  ``fn`` itself when rematerialisation is off; the block's activations are then recomputed in the backward pass
  instead of being stored (less memory, about one extra forward of the block).
* ``run_blocks(blocks, x, rngs=...)``: a list of same-shaped blocks in order, rematerialised under the remat policy,
  and under ``scan_layers`` run as one ``jax.lax.scan`` over the stacked weights of identical blocks (one compiled
  body instead of one per block; the parameters stay a list, so checkpoints and converters do not change).

The trainer (``uss_jax.train.trainer``) enters ``context(mesh, config.sharding_rules, remat=config.remat,
scan_layers=config.scan_layers)`` inside its jitted train / eval steps, so the switches apply while the step is
traced. Sources: maxtext ``layers/linears.py`` / ``utils/sharding.py`` (logical activation constraints), big_vision
(``remat`` / ``scan`` switches); JAX ``jax.checkpoint_policies``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

# config.remat -> jax.checkpoint policy (None = save nothing but the block inputs).
REMAT_POLICIES: dict[str, Any] = {
    "none": None,  # no rematerialisation
    "full": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "dots_with_batch": jax.checkpoint_policies.dots_saveable,
}


@dataclasses.dataclass(frozen=True)
class _Context:
  mesh: Any
  rules: tuple[tuple[str, Any], ...]
  remat: str
  scan_layers: bool


_LOCAL = threading.local()


def _current() -> _Context | None:
  stack = getattr(_LOCAL, "stack", None)
  return stack[-1] if stack else None


def check_remat(name: str) -> str:
  """Validates ``config.remat``.

  Raises:
    ValueError: not one of ``REMAT_POLICIES``.
  """
  if name not in REMAT_POLICIES:
    raise ValueError(f"config.remat must be one of {sorted(REMAT_POLICIES)}, got {name!r}")
  return name


@contextlib.contextmanager
def context(mesh: Any = None, rules: Sequence[Sequence[Any]] | None = None, *, remat: str = "none",
            scan_layers: bool = False) -> Iterator[None]:
  """Activation constraints on ``mesh`` with ``rules`` (None: none), the remat policy and the scan switch, for the
  code traced inside the ``with`` block (thread-local, nestable).

  Raises:
    ValueError: an unknown ``remat`` name.
  """
  ctx = _Context(mesh, tuple(tuple(r) for r in (rules or ())), check_remat(remat or "none"), bool(scan_layers))
  stack = getattr(_LOCAL, "stack", None)
  if stack is None:
    stack = _LOCAL.stack = []
  stack.append(ctx)
  try:
    yield
  finally:
    stack.pop()


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """``x`` constrained to the sharding its logical ``names`` (one per dimension, None = unsharded) get on the current
  mesh; ``x`` itself outside a context or on a one-device mesh.

  Raises:
    ValueError: ``len(names) != x.ndim``. UnknownLogicalAxisError: a name the rules table lacks.
  """
  ctx = _current()
  if ctx is None or ctx.mesh is None:
    return x
  if len(names) != x.ndim:
    raise ValueError(f"constrain: {len(names)} names {tuple(names)} for an array of shape {x.shape}")
  if ctx.mesh.size == 1:
    return x
  from uss_jax.train import sharding  # pylint: disable=import-outside-toplevel
  spec = sharding.logical_to_spec(tuple(names), x.shape, ctx.mesh, ctx.rules)
  return jax.lax.with_sharding_constraint(x, NamedSharding(ctx.mesh, spec))


def remat_policy() -> str:
  """The current context's ``config.remat`` (``'none'`` outside a context)."""
  ctx = _current()
  return ctx.remat if ctx is not None else "none"


def scan_layers() -> bool:
  """The current context's ``config.scan_layers`` (False outside a context)."""
  ctx = _current()
  return bool(ctx and ctx.scan_layers)


def remat(fn: Callable[..., Any]) -> Callable[..., Any]:
  """``fn(module, *args)`` under ``nnx.remat`` with the context's policy, or ``fn`` when remat is off.

  Pass static values (grids, flags) by closure: every positional argument after the module is traced. RNG streams
  (``nnx.Rngs``) may be passed; they advance exactly as without remat, so results do not change.
  """
  name = remat_policy()
  if name == "none":
    return fn
  return nnx.remat(fn, policy=REMAT_POLICIES[name])


def checkpoint_fn(fn: Callable[..., Any]) -> Callable[..., Any]:
  """``jax.checkpoint`` of a pure function with the context's policy (the body of a scan), or ``fn`` when off."""
  name = remat_policy()
  if name == "none":
    return fn
  return jax.checkpoint(fn, policy=REMAT_POLICIES[name])


# ---- running a list of blocks: unrolled, rematerialised or scanned ----


def _call_block(block: nnx.Module, x: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
  return block(x, rngs=rngs)


def run_blocks(blocks: Sequence[nnx.Module], x: jax.Array, *, rngs: nnx.Rngs | None = None,
               return_layers: bool = False) -> tuple[jax.Array, list[jax.Array]]:
  """``x`` through ``blocks`` (each ``block(x, rngs=rngs)`` with the same input and output shape), in order.

  Under the trainer's ``config.scan_layers`` (``scan_layers()``) blocks that are identical apart from
  their weights (same graph, e.g. no per-block drop-path rates) run as ONE ``jax.lax.scan`` step over their stacked
  weights: XLA compiles the block once instead of ``len(blocks)`` times. Random streams inside the scan are keys
  split from ``rngs`` per block when a dropout of the blocks is active (a different draw than the unrolled loop);
  without active dropout nothing is drawn and results equal the unrolled loop's. Under ``config.remat`` each block (or the scanned step) is rematerialised in the backward pass.

  Returns:
    ``(output, per-block outputs)`` (the list only with ``return_layers``; then the blocks are never scanned).
  """
  blocks = list(blocks)
  if scan_layers() and len(blocks) > 1 and not return_layers:
    graphdefs = [nnx.graphdef(b) for b in blocks]
    if all(g == graphdefs[0] for g in graphdefs[1:]):
      return _scan_blocks(graphdefs[0], blocks, x, rngs), []
    _warn_scan_fallback(type(blocks[0]).__name__)
  call = remat(_call_block)
  layers = []
  for block in blocks:
    x = call(block, x, rngs)
    if return_layers:
      layers.append(x)
  return x, layers


_SCAN_WARNED: set[str] = set()


def _warn_scan_fallback(name: str) -> None:
  if name not in _SCAN_WARNED:
    _SCAN_WARNED.add(name)
    logging.warning("scan_layers: the %s blocks differ in their static settings (e.g. per-block drop path); "
                    "running them unrolled", name)


def _uses_dropout(block: nnx.Module) -> bool:
  return any(isinstance(m, nnx.Dropout) and m.rate > 0 and not m.deterministic for _, m in block.iter_modules())


def _stream_key(rngs: nnx.Rngs | None, block: nnx.Module) -> jax.Array | None:
  if rngs is None or not _uses_dropout(block):  # draw nothing: later random streams stay as in the unrolled loop
    return None
  for stream in ("dropout", "default"):
    if stream in rngs:
      return rngs[stream]()
  return None


def _scan_blocks(graphdef: Any, blocks: Sequence[nnx.Module], x: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
  stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[nnx.state(b) for b in blocks])
  key = _stream_key(rngs, blocks[0])
  keys = jax.random.split(key, len(blocks)) if key is not None else None

  def step(h, xs):
    state, k = xs
    block = nnx.merge(graphdef, state)
    return block(h, rngs=nnx.Rngs(dropout=k, default=k) if k is not None else None), None

  step = checkpoint_fn(step)
  x, _ = jax.lax.scan(step, x, (stacked, keys))
  return x
