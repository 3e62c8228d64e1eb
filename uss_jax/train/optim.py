"""Optimizers and learning-rate schedules named in the configs.

``config.optimizer``: ``name`` (adamw | adam | sgd), ``learning_rate`` (peak), ``b1``, ``b2``, ``eps``,
``weight_decay``, ``amsgrad`` (bytedance/uss trains ResUNet30 with AdamW amsgrad), ``grad_clip_norm`` (0 = off),
``layer_decay`` (handled by the task through ``param_labels``).
``config.schedule``: ``name`` one of
  * ``constant``;
  * ``warmup_cosine``: linear warm-up over ``warmup_steps`` then half-cycle cosine to ``end_factor`` x peak at
    ``decay_steps`` (AudioMAE's half-cycle cosine, MAE ``util/lr_sched.py``);
  * ``step``: piecewise-constant factors ``factors`` at ``boundaries`` (bytedance/uss ``get_lr_lambda``:
    x0.001 below 10k steps, x0.01 below 20k, x0.1 below 30k, then x1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optax


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
  """Builds the optax chain ``clip -> optimizer(schedule)`` from the config.

  Returns:
    ``(tx, lr_schedule)``; the schedule is returned for logging.
  Raises:
    ValueError: unknown ``optimizer.name``.
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
  clip = float(opt.get("grad_clip_norm", 0.0) or 0.0)
  tx = optax.chain(optax.clip_by_global_norm(clip), core) if clip > 0 else core
  return tx, lr
