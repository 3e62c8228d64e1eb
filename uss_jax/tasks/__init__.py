"""Training recipes as small task objects; ``get_task(config, workdir)`` picks one by ``config.task``."""

from __future__ import annotations

import importlib

from uss_jax.tasks.base import Task

# config.task -> "module:Class"; imported lazily so a recipe's dependencies load only when used.
TASKS = {
    "tagging": "uss_jax.tasks.tagging:TaggingTask",
    "mam": "uss_jax.tasks.mam:MAMTask",
    "separation": "uss_jax.tasks.separation:SeparationTask",
    "joint_separation": "uss_jax.tasks.joint_separation:JointSeparationTask",
    "soundfilter": "uss_jax.tasks.soundfilter:SoundFilterTask",
    "tse": "uss_jax.tasks.tse:TSETask",
    "contrastive": "uss_jax.tasks.contrastive:ContrastiveTask",
}


def get_task(config, workdir: str) -> Task:
  """Instantiates the task named by ``config.task``.

  Raises:
    ValueError: unknown task name.
  """
  name = config.get("task")
  if name not in TASKS:
    raise ValueError(f"config.task: unknown task {name!r}; known tasks: {sorted(TASKS)}")
  module, cls = TASKS[name].split(":")
  return getattr(importlib.import_module(module), cls)(config, workdir)


__all__ = ["Task", "TASKS", "get_task"]
