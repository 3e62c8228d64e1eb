"""Orbax checkpoints: model + optimizer state, the step, the grain iterator state and the resolved config, together.

One ``ocp.CheckpointManager`` per workdir (``<workdir>/checkpoints``) with three items per step:
  * ``state``  the ``nnx.State`` of the train state as a pure dict (``StandardSave``); restored onto any mesh by giving
    ``StandardRestore`` abstract leaves that carry the new shardings;
  * ``data``   the grain iterator (``grain.checkpoint.CheckpointSave``, one file per process), so a resumed run reads
    exactly the batches an uninterrupted run would have read;
  * ``config`` the resolved config as JSON (for ``uss-jax eval`` / ``separate`` and for humans).
Orbax writes each step into a temporary directory and renames it when complete (on GCS: a commit marker), so a run
killed at any moment leaves only whole checkpoints (the previous ones stay readable); saves are asynchronous, and the
save arguments (a pure dict of the state, the iterator position, the config) are built only at the steps orbax saves.
Paths may be local or URLs (``gs://``): orbax receives ``uss_jax.io.native(path)``, the reading helpers below go
through ``uss_jax.io`` (epath).
(Pattern: flax examples/gemma input_pipeline_grain.py, maxtext common/checkpointing.py.)
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from uss_jax import io


class _IteratorSnapshot:
  """A frozen iterator state with the ``get_state`` interface grain's checkpoint handler calls.

  grain's handler runs in orbax's writer thread, after the loop may have advanced the live iterator, so the state is
  captured at ``save()`` time; the handler writes the JSON bytes returned here as ``process_<i>-of-<n>.json``.
  """

  def __init__(self, state: Any):
    self._state = state if isinstance(state, bytes) else json.dumps(state, indent=1).encode()

  def get_state(self) -> bytes:
    return self._state


class Checkpointer:
  """Save / restore of the training state, data-iterator state and config under ``directory``.

  Args:
    directory: where the step folders go (local path or ``gs://``).
    keep: how many most recent checkpoints to keep (``max_to_keep``).
    every: save interval in steps (``save_interval_steps``); ``save(..., force=True)`` ignores it.
    async_save: write in a background thread (``enable_async_checkpointing``).
  """

  def __init__(self, directory: str | os.PathLike, keep: int = 3, every: int = 1000, async_save: bool = True):
    self.directory = io.native(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=max(1, int(every)), enable_async_checkpointing=async_save,
        create=True, cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data", "config"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def should_save(self, step: int) -> bool:
    return self.manager.should_save(step)

  def save(self, step: int, state: Any, data_iterator: Any = None, config: Any = None, force: bool = False) -> bool:
    """Saves ``state`` (an ``nnx.State`` or pytree of arrays) at ``step``; returns whether a save started.

    Nothing is built (no pure dict of the state, no iterator snapshot, no config JSON) unless ``force`` or orbax's
    ``should_save(step)`` says this step is saved (the interval, or a preemption notice).
    """
    if not force and not self.manager.should_save(step):
      return False
    pure = state.to_pure_dict() if hasattr(state, "to_pure_dict") else state
    items = {"state": ocp.args.StandardSave(pure)}
    if data_iterator is not None:
      # Capture the iterator position now: the write may happen after the loop has advanced it.
      items["data"] = grain.checkpoint.CheckpointSave(_IteratorSnapshot(data_iterator.get_state()))
    if config is not None:
      items["config"] = ocp.args.JsonSave(json.loads(config.to_json_best_effort()) if hasattr(
          config, "to_json_best_effort") else config)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, abstract_state: Any, step: int | None = None, data_iterator: Any = None) -> tuple[Any, int]:
    """Restores onto the shardings carried by ``abstract_state``'s leaves (``jax.ShapeDtypeStruct`` with sharding).

    Args:
      abstract_state: an ``nnx.State`` whose leaves are ``ShapeDtypeStruct``s (as from ``nnx.eval_shape``) with the
        target ``sharding`` set; the mesh may differ from the one the checkpoint was written on.
      step: which step; default the latest.
      data_iterator: a grain iterator whose state is set in place from the checkpoint.
    Returns:
      ``(state, step)`` where ``state`` is an ``nnx.State`` like ``abstract_state``.
    Raises:
      FileNotFoundError: no checkpoint in the directory (or not that step).
    """
    step = self.latest_step() if step is None else step
    if step is None or step not in self.all_steps():
      raise FileNotFoundError(f"no checkpoint{'' if step is None else f' at step {step}'} in {self.directory}")
    pure_abstract = abstract_state.to_pure_dict() if hasattr(abstract_state, "to_pure_dict") else abstract_state
    items = {"state": ocp.args.StandardRestore(pure_abstract)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    if hasattr(abstract_state, "to_pure_dict"):
      from flax import nnx
      state = jax.tree.map(lambda x: x, abstract_state)  # a copy to fill in
      nnx.replace_by_pure_dict(state, restored["state"])
    else:
      state = restored["state"]
    logging.info("restored step %d from %s", step, self.directory)
    return state, step

  def restore_config(self, step: int | None = None) -> dict[str, Any]:
    """The JSON config stored with a checkpoint (latest by default)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    path = io.join(self.directory, str(step), "config")
    restored = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    if restored.get("config") is None:
      raise FileNotFoundError(f"checkpoint {path} holds no config")
    return restored["config"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def reached_preemption(self, step: int) -> bool:
    """True on every process once any process got a preemption notice (jax's multi-host sync point)."""
    return self.manager.reached_preemption(step)

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


# ---- reading another run's model (pretrained / frozen sub-networks, inference) ----


def finished_steps(workdir: str | os.PathLike) -> list[int]:
  """The finished checkpoint steps under ``<workdir>/checkpoints`` (those with a ``state`` item), ascending.

  ``workdir`` may be a URL (``gs://``); orbax's unfinished steps (``<step>.orbax-checkpoint-tmp-*``) are not digits.
  """
  directory = io.join(workdir, "checkpoints")
  return sorted(int(p) for p in io.listdir(directory)
                if p.isdigit() and io.is_dir(io.join(directory, p, "state")))


def restore_model_tree(state_dir: str | os.PathLike) -> dict[str, Any]:
  """The ``model`` subtree of an orbax ``state`` item (local path or URL) as a pure dict of numpy arrays (the
  optimizer is not read).

  Raises:
    ValueError: the item holds no ``model`` state.
  """
  import numpy as np  # pylint: disable=import-outside-toplevel

  state_dir = io.native(state_dir)
  checkpointer = ocp.PyTreeCheckpointer()
  meta = checkpointer.metadata(state_dir)
  meta = getattr(meta, "item_metadata", meta) or meta
  meta = getattr(meta, "tree", meta)
  if "model" not in meta:
    raise ValueError(f"{state_dir} holds no 'model' state (keys: {sorted(meta)})")
  restore_args = {"model": jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta["model"])}
  item = jax.tree.map(lambda _: 0, restore_args, is_leaf=lambda x: isinstance(x, ocp.RestoreArgs))
  restored = checkpointer.restore(
      state_dir, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True))
  return restored["model"]


def restore_run_model(workdir: str | os.PathLike, step: int | None = None, *, field: str = "workdir",
                      hint: str = "") -> tuple[dict[str, Any], Any, int]:
  """The model state and config of another run of this project, e.g. the tagging run whose Cnn14 becomes a frozen
  query net, or the pretraining run whose encoder initialises a fine-tune.

  Args:
    workdir: the run's directory (``<workdir>/checkpoints/<step>/{state,config}``).
    step: the checkpoint step; None = the latest finished one.
    field: the config field that named ``workdir`` (for error messages), e.g. ``'config.query.workdir'``.
    hint: how to produce such a run (appended to the "no checkpoint" message).

  Returns:
    ``(model, config, step)``: the ``model`` subtree as a pure dict of numpy arrays (the optimizer is not read), the
    run's resolved config (``ml_collections.ConfigDict``) and the step read.

  Raises:
    FileNotFoundError: no finished checkpoint in ``workdir``, or none at ``step`` (the message lists the steps).
  """
  import ml_collections  # pylint: disable=import-outside-toplevel

  workdir = os.fspath(workdir) if io.is_remote(workdir) else os.path.abspath(workdir)
  directory = io.join(workdir, "checkpoints")
  steps = finished_steps(workdir)
  if not steps:
    raise FileNotFoundError(f"{field}: no finished checkpoint in {directory}" + (f" ({hint})" if hint else ""))
  if step is None:
    step = steps[-1]
  elif int(step) not in steps:
    raise FileNotFoundError(f"{field}: no checkpoint at step {step} in {directory} (steps: "
                            f"{', '.join(map(str, steps))})")
  step = int(step)
  config = ml_collections.ConfigDict(io.read_json(io.join(directory, str(step), "config", "metadata")))
  return restore_model_tree(io.join(directory, str(step), "state")), config, step
