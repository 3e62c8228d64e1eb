"""A run directory as inference, ``uss-jax info`` and converted checkpoints see it.

    <workdir>/checkpoints/<step>/{state, config, data}   orbax items (uss_jax.train.checkpoint); ``config/metadata``
                                                         is the run's resolved config as JSON
    <workdir>/system_context.json                        what the registry needs besides the config (models/registry)
    <workdir>/class_embeddings.npz                       class-average query conditions (separation runs)
    <workdir>/events.out.tfevents.*                       TensorBoard scalars (train/..., eval/...)

``load_system(path)`` rebuilds the system of any registered run from these files alone (``registry.build_system``
under ``nnx.eval_shape``, then only the ``model`` subtree of the checkpoint is read: the optimizer never is). Runs
written before ``system_context.json`` existed (separation runs with ``query_net_config.json``) still load.
Paths go through ``etils.epath`` (``uss_jax.io``), so ``gs://`` runs load too.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

from flax import nnx
import ml_collections
import numpy as np

from uss_jax import io
from uss_jax.models import interface, registry
from uss_jax.train import checkpoint as checkpoint_lib

LEGACY_QUERY_CONFIG_FILE = "query_net_config.json"
CLASS_TABLE_FILE = "class_embeddings.npz"


def checkpoint_steps(workdir: str | os.PathLike) -> list[int]:
  """The finished checkpoint steps under ``<workdir>/checkpoints`` (ascending)."""
  return checkpoint_lib.finished_steps(workdir)


def _normpath(path: str | os.PathLike) -> str:
  path = os.fspath(path)
  return path.rstrip("/") if io.is_remote(path) else os.path.abspath(path)


def resolve_checkpoint(path: str | os.PathLike, step: int | None = None) -> tuple[str, int]:
  """``(workdir, step)`` for a run directory or one of its ``checkpoints/<step>`` folders.

  Raises:
    FileNotFoundError: no such directory, no finished checkpoint, or not that step (the message lists the steps).
    ValueError: ``step`` contradicts a ``checkpoints/<step>`` folder.
  """
  path = _normpath(path)
  if not io.exists(path):
    raise FileNotFoundError(f"checkpoint directory not found: {path}")
  name, parent = os.path.basename(path), os.path.dirname(path)
  if name.isdigit() and os.path.basename(parent) == "checkpoints" and io.exists(os.path.join(path, "state")):
    if step is not None and step != int(name):
      raise ValueError(f"--step {step} contradicts the checkpoint folder {path}")
    return os.path.dirname(parent), int(name)
  steps = checkpoint_steps(path)
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {os.path.join(path, 'checkpoints')} (train a run first, or write one "
                            "with uss-jax convert)")
  if step is None:
    return path, steps[-1]
  if step not in steps:
    raise FileNotFoundError(f"no checkpoint at step {step} in {path}/checkpoints (steps: "
                            f"{', '.join(map(str, steps))})")
  return path, step


def read_config(workdir: str, step: int) -> ml_collections.ConfigDict:
  """The resolved config stored with checkpoint ``step``."""
  path = os.path.join(workdir, "checkpoints", str(step), "config", "metadata")
  if not io.exists(path):
    raise FileNotFoundError(f"{path}: the checkpoint holds no config")
  return ml_collections.ConfigDict(json.loads(io.read_text(path)))


def load_class_table(workdir: str | os.PathLike) -> tuple[list[str], np.ndarray | None]:
  """``(class_names, embeddings (classes, condition_size))`` of ``<workdir>/class_embeddings.npz``; ``([], None)``
  when the run has none."""
  path = os.path.join(os.fspath(workdir), CLASS_TABLE_FILE)
  if not io.exists(path):
    return [], None
  f = io.load_npz(path)
  return [str(n) for n in f["class_names"]], np.asarray(f["embeddings"], np.float32)


def _legacy_context(workdir: str, config: ml_collections.ConfigDict, tree: dict[str, Any]) -> dict[str, Any]:
  """The context of a separation run written before system_context.json: its query net's config beside it (or in
  the tagging run its config names) and the class count from the checkpoint."""
  query_path = os.path.join(workdir, LEGACY_QUERY_CONFIG_FILE)
  if not io.exists(query_path):
    tag_dir = config.get("query", {}).get("workdir", "") if config.get("query") else ""
    tag_steps = checkpoint_steps(tag_dir) if tag_dir else []
    tag_step = (config.get("query") or {}).get("step") or (tag_steps[-1] if tag_steps else None)
    query_path = os.path.join(tag_dir, "checkpoints", str(tag_step), "config", "metadata")
    if tag_step is None or not io.exists(query_path):
      raise FileNotFoundError(f"{workdir} has no {registry.CONTEXT_FILE} (nor {LEGACY_QUERY_CONFIG_FILE}) and its "
                              f"query net's run {tag_dir or '(config.query.workdir unset)'} has no checkpoint config")
  try:
    num_classes = int(np.asarray(tree["query_net"]["fc_audioset"]["kernel"]).shape[-1])
  except (KeyError, TypeError) as e:
    raise FileNotFoundError(f"{workdir} has no {registry.CONTEXT_FILE} and is not a separation run") from e
  return {"query_net_config": json.loads(io.read_text(query_path)), "num_classes": num_classes}


@dataclasses.dataclass
class LoadedRun:
  """A run's system rebuilt from its directory (``load_system``)."""
  workdir: str
  step: int
  config: ml_collections.ConfigDict
  context: dict[str, Any]
  model: nnx.Module
  info: interface.SystemInterface


def load_system(path: str | os.PathLike, step: int | None = None) -> LoadedRun:
  """The system of a separation / extraction run (or a converted checkpoint) at ``step`` (default latest), in eval
  mode (``model.eval()``: BatchNorm running statistics, no dropout); call ``model.train()`` to fine-tune it.

  Raises:
    FileNotFoundError: no checkpoint (or not that step), or no context to rebuild the model from.
    ValueError: the run's config names no registered separation system (e.g. a tagging run), or the checkpoint's
      model does not fit the architecture its config describes (the first differing variable is named).
  """
  workdir, step = resolve_checkpoint(path, step)
  config = read_config(workdir, step)
  try:
    name = registry.system_name(config)
  except ValueError:
    name = None
  if name not in registry.SYSTEMS:
    raise ValueError(f"{workdir} is a {config.get('task')!r} run, not a separation run (its model "
                     f"{name or '(unnamed)'} is not a registered separation system: {', '.join(sorted(registry.SYSTEMS))})")
  tree = checkpoint_lib.restore_model_tree(os.path.join(workdir, "checkpoints", str(step), "state"))
  context = registry.read_context(workdir)
  if context is None:
    context = _legacy_context(workdir, config, tree)
  abstract = nnx.eval_shape(lambda: registry.build_system(config, context, nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  try:
    nnx.replace_by_pure_dict(state, tree)
  except (KeyError, ValueError, TypeError) as e:
    raise ValueError(f"{workdir} step {step}: the checkpoint's model does not match a {name!r} system built from "
                     f"its config: {e}") from e
  _check_restored(state, workdir, step)
  model = nnx.merge(graphdef, state)
  model.eval()
  info = interface.check_system(model)
  logging.info("loaded %s: %s step %d, %d Hz, queries %s", workdir, name, step, info.sample_rate, info.query_kinds)
  return LoadedRun(workdir=workdir, step=step, config=config, context=context, model=model, info=info)


def _check_restored(state: Any, workdir: str, step: int) -> None:
  import jax  # pylint: disable=import-outside-toplevel

  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    if isinstance(leaf, jax.ShapeDtypeStruct):
      names = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
      raise ValueError(f"{workdir} step {step}: the checkpoint has no value for model variable {names}")


def last_metrics(workdir: str, collection: str = "eval") -> tuple[int | None, dict[str, float]]:
  """``(step, {name: value})`` of the last scalars written under ``<collection>/`` to the run's TensorBoard events
  (the trainer's clu writer); ``(None, {})`` when there are none."""
  try:
    from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None, {}
  best: dict[str, tuple[int, float]] = {}
  for sub in ("", collection):
    directory = os.path.join(workdir, sub) if sub else workdir
    if not io.exists(directory):
      continue
    acc = event_accumulator.EventAccumulator(directory, size_guidance={event_accumulator.TENSORS: 0,
                                                                       event_accumulator.SCALARS: 0})
    try:
      acc.Reload()
    except Exception:  # a directory without events  # pylint: disable=broad-except
      continue
    tags = acc.Tags()
    for tag in tags.get("tensors", []):
      if tag.startswith(f"{collection}/"):
        ev = acc.Tensors(tag)[-1]
        best[tag[len(collection) + 1:]] = (ev.step, float(np.asarray(_tensor_value(ev.tensor_proto))))
    for tag in tags.get("scalars", []):
      if tag.startswith(f"{collection}/"):
        ev = acc.Scalars(tag)[-1]
        best[tag[len(collection) + 1:]] = (ev.step, float(ev.value))
  if not best:
    return None, {}
  step = max(s for s, _ in best.values())
  return step, {k: v for k, (s, v) in sorted(best.items()) if s == step}


def _tensor_value(proto) -> np.ndarray:
  from tensorboard.util import tensor_util  # pylint: disable=import-outside-toplevel
  return tensor_util.make_ndarray(proto)


def run_info(path: str | os.PathLike, step: int | None = None) -> dict[str, Any]:
  """What ``uss-jax info`` prints: model, rates, query kinds, outputs, classes, steps, last evaluation metrics.

  Raises:
    FileNotFoundError / ValueError: as ``load_system``.
  """
  run = load_system(path, step)
  names, table = load_class_table(run.workdir)
  info = run.info
  queries = []
  for kind in info.query_kinds:
    queries.append({"audio": "--query-audio / --enrollment", "class": "--query-class", "text": "--query-text"}[kind])
  if table is not None and "class" not in info.query_kinds:
    queries.append("--query-class (class-average embeddings)")
  eval_step, metrics = last_metrics(run.workdir)
  return {
      "checkpoint": run.workdir, "step": run.step, "steps": checkpoint_steps(run.workdir),
      "task": run.config.get("task"), "model": info.name, "sample_rate": info.sample_rate,
      "segment_seconds": info.segment_samples / info.sample_rate, "condition_size": info.condition_size,
      "condition_space": info.condition_space, "query_kinds": list(info.query_kinds), "queries": queries,
      "outputs": list(info.outputs), "streaming": info.streaming,
      "classes": list(info.class_names) or names,
      "converted_from": run.context.get("converted_from"),
      "eval_step": eval_step, "eval": metrics,
  }
