"""Optimizers and learning-rate schedules named in the configs.

``config.optimizer``: ``name`` (adamw | adam | sgd), ``learning_rate`` (peak), ``b1``, ``b2``, ``eps``,
``weight_decay``, ``amsgrad`` (bytedance/uss trains ResUNet30 with AdamW amsgrad), ``grad_clip_norm`` (0 = off),
``layer_decay`` (0 or 1 = off; 0.75 for AudioMAE fine-tuning): layer-wise learning-rate decay of a ViT
(``scale_by_layer_decay``, ELECTRA / BEiT rule as in MAE / AudioMAE ``util/lr_decay.py`` ``param_groups_lrd``): every
update, weight decay included, is multiplied by ``layer_decay ** (num_blocks + 1 - layer_id)`` where ``layer_id``
comes from the parameter's path (``vit_layer_id``).
``lr_multipliers``: ``[(path name, factor), ...]`` per-group learning-rate factors (``scale_by_path``; MAE-ResUNet
trains its A-MAE layers at their own rate).
``config.schedule``: ``name`` one of
  * ``constant``;
  * ``warmup_cosine``: linear warm-up over ``warmup_steps`` then half-cycle cosine to ``end_factor`` x peak at
    ``decay_steps`` (AudioMAE's half-cycle cosine, MAE ``util/lr_sched.py``);
  * ``step``: piecewise-constant factors ``factors`` at ``boundaries`` (bytedance/uss ``get_lr_lambda``:
    x0.001 below 10k steps, x0.01 below 20k, x0.1 below 30k, then x1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import optax

# Parameters that never get weight decay besides the 1-D ones: timm ``VisionTransformer.no_weight_decay()``
# (``{'pos_embed', 'cls_token', 'dist_token'}``), which AudioMAE passes to ``param_groups_lrd``.
NO_WEIGHT_DECAY_NAMES = ("pos_embed", "cls_token", "dist_token")


def path_names(path: Sequence[Any]) -> tuple[str, ...]:
  """The names of a ``jax.tree_util`` key path as strings (``DictKey`` keys, sequence indices, attribute names)."""
  out = []
  for k in path:
    for attr in ("key", "idx", "name"):
      if hasattr(k, attr):
        out.append(str(getattr(k, attr)))
        break
    else:
      out.append(str(k))
  return tuple(out)


def vit_layer_id(names: Sequence[str], num_blocks: int) -> int:
  """Layer id of a ViT parameter for layer-wise LR decay, from its path names (any prefix, e.g. ``encoder``).

  Source: MAE / AudioMAE ``util/lr_decay.py`` ``get_layer_id_for_vit`` (BEiT ``optim_factory.py``): ``cls_token``,
  ``pos_embed`` and ``patch_embed.*`` -> 0; ``blocks.{i}.*`` -> ``i + 1``; everything else (``fc_norm``, ``norm``,
  ``head``) -> ``num_blocks + 1``. The first path component that is one of these names decides.

  Args:
    names: the parameter's path, e.g. ``('encoder', 'blocks', '3', 'attn', 'qkv', 'kernel')``.
    num_blocks: transformer blocks of the model (``depth``).

  Returns:
    an int in ``0 .. num_blocks + 1``.
  """
  names = [str(n) for n in names]
  for i, name in enumerate(names):
    if name in ("cls_token", "pos_embed", "patch_embed"):
      return 0
    if name == "blocks" and i + 1 < len(names) and names[i + 1].isdigit():
      return int(names[i + 1]) + 1
  return num_blocks + 1


def _num_blocks(paths: Sequence[tuple[str, ...]]) -> int:
  ids = [int(p[i + 1]) for p in paths for i in range(len(p) - 1) if p[i] == "blocks" and p[i + 1].isdigit()]
  return max(ids) + 1 if ids else 0


def layer_decay_scales(params: Any, layer_decay: float, num_blocks: int | None = None) -> Any:
  """Per-parameter learning-rate factors ``layer_decay ** (num_blocks + 1 - vit_layer_id(path))``, same tree.

  ``param_groups_lrd``: ``num_layers = len(blocks) + 1``, ``layer_scales[i] = decay ** (num_layers - i)``: the head
  / ``fc_norm`` get 1, block ``i`` gets ``decay ** (depth - i)``, the embeddings ``decay ** (depth + 1)``.

  Args:
    params: a pytree of arrays (an ``nnx.State`` works: its paths carry the module names).
    layer_decay: the decay factor (0.75 in AudioMAE).
    num_blocks: the model's depth; None = one more than the largest ``blocks.{i}`` index in ``params`` (0 if none).

  Returns:
    a tree like ``params`` of python floats.
  """
  leaves = jax.tree_util.tree_leaves_with_path(params)
  if num_blocks is None:
    num_blocks = _num_blocks([path_names(p) for p, _ in leaves])
  return jax.tree_util.tree_map_with_path(
      lambda p, _: float(layer_decay) ** (num_blocks + 1 - vit_layer_id(path_names(p), num_blocks)), params)


def scale_by_layer_decay(layer_decay: float, num_blocks: int | None = None) -> optax.GradientTransformation:
  """Multiplies each update by its ``layer_decay_scales`` factor (stateless; placed after the optimizer so that the
  factor scales the whole step, weight decay included, as PyTorch's per-group ``lr``)."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    scales = layer_decay_scales(updates, layer_decay, num_blocks)
    return jax.tree.map(lambda u, s: u * s, updates, scales), state

  return optax.GradientTransformation(init_fn, update_fn)


def scale_by_path(multipliers: Sequence[Sequence[Any]]) -> optax.GradientTransformation:
  """Multiplies the update of every parameter whose path contains a rule's name by the rule's factor (stateless;
  placed after the optimizer, so it acts as a per-group learning rate, weight decay included).

  Args:
    multipliers: ``[(name, factor), ...]``; a path matches when one of its components equals ``name``; the first
      matching rule wins (e.g. ``[('encoder', 0.1)]``: a pretrained encoder trained at a tenth of the peak rate).
  """
  rules = [(str(n), float(f)) for n, f in multipliers]

  def factor(path) -> float:
    names = set(path_names(path))
    return next((f for n, f in rules if n in names), 1.0)

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    return jax.tree_util.tree_map_with_path(lambda p, u: u * factor(p), updates), state

  return optax.GradientTransformation(init_fn, update_fn)


def vit_weight_decay_mask(params: Any) -> Any:
  """AudioMAE's weight-decay selection: parameters with ``ndim > 1`` whose path holds no ``NO_WEIGHT_DECAY_NAMES``.

  Source: MAE ``param_groups_lrd`` (``p.ndim == 1 or n in no_weight_decay_list`` -> no decay). Usable as
  ``Task.weight_decay_mask`` (an optax ``mask`` callable).
  """
  return jax.tree_util.tree_map_with_path(
      lambda p, x: getattr(x, "ndim", 0) > 1 and not set(path_names(p)) & set(NO_WEIGHT_DECAY_NAMES), params)


def make_schedule(schedule: Mapping[str, Any], peak: float, total_steps: int) -> optax.Schedule:
  """The learning rate as a function of the step (see the module docstring for the names).

  Raises:
    ValueError: an unknown ``schedule.name`` or a malformed ``step`` schedule.
  """
  name = schedule.get("name", "constant")
  if name == "constant":
    return optax.constant_schedule(peak)
  if name == "warmup_cosine":
    warmup = int(schedule.get("warmup_steps", 0))
    decay = int(schedule.get("decay_steps", 0) or total_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=float(schedule.get("init_factor", 0.0)) * peak, peak_value=peak, warmup_steps=warmup,
        decay_steps=max(decay, warmup + 1), end_value=float(schedule.get("end_factor", 0.0)) * peak)
  if name == "step":
    boundaries = [int(b) for b in schedule.get("boundaries", ())]
    factors = [float(f) for f in schedule.get("factors", ())]
    if len(factors) != len(boundaries) + 1:
      raise ValueError(f"config.schedule: 'step' needs len(factors) == len(boundaries) + 1, got {factors}, {boundaries}")
    return optax.piecewise_constant_schedule(
        init_value=peak * factors[0],
        boundaries_and_scales={b: factors[i + 1] / factors[i] for i, b in enumerate(boundaries)})
  raise ValueError(f"config.schedule.name: unknown schedule {name!r} (constant | warmup_cosine | step)")


def make_optimizer(opt: Mapping[str, Any], schedule: Mapping[str, Any], total_steps: int,
                   weight_decay_mask: Any = None) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the optax chain ``clip -> optimizer(schedule) [-> layer decay]`` from the config.

  Returns:
    ``(tx, lr_schedule)``; the schedule is returned for logging.
  Raises:
    ValueError: unknown ``optimizer.name``, or ``layer_decay`` outside [0, 1].
  """
  peak = float(opt.get("learning_rate", 1e-3))
  lr = make_schedule(schedule, peak, total_steps)
  name = opt.get("name", "adamw")
  b1, b2, eps = float(opt.get("b1", 0.9)), float(opt.get("b2", 0.999)), float(opt.get("eps", 1e-8))
  wd = float(opt.get("weight_decay", 0.0))
  if name in ("adamw", "adam"):
    if opt.get("amsgrad", False):
      core = optax.chain(optax.scale_by_amsgrad(b1=b1, b2=b2, eps=eps),
                         optax.add_decayed_weights(wd, weight_decay_mask) if wd else optax.identity(),
                         optax.scale_by_learning_rate(lr))
    elif name == "adamw":
      core = optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=wd, mask=weight_decay_mask)
    else:
      core = optax.adam(lr, b1=b1, b2=b2, eps=eps)
  elif name == "sgd":
    core = optax.sgd(lr, momentum=float(opt.get("momentum", 0.9)))
  else:
    raise ValueError(f"config.optimizer.name: unknown optimizer {name!r} (adamw | adam | sgd)")
  layer_decay = float(opt.get("layer_decay", 0.0) or 0.0)
  if not 0.0 <= layer_decay <= 1.0:
    raise ValueError(f"config.optimizer.layer_decay must be in [0, 1] (0 or 1 = off), got {layer_decay}")
  if layer_decay and layer_decay != 1.0:
    core = optax.chain(core, scale_by_layer_decay(layer_decay))
  multipliers = [tuple(r) for r in (opt.get("lr_multipliers", None) or ())]
  if multipliers:
    core = optax.chain(core, scale_by_path(multipliers))
  clip = float(opt.get("grad_clip_norm", 0.0) or 0.0)
  tx = optax.chain(optax.clip_by_global_norm(clip), core) if clip > 0 else core
  return tx, lr
