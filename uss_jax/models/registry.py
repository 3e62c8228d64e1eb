"""One registry of separation / extraction systems: ``config.model.name`` -> the builder of the system module.

    model = registry.build_system(config, context, nnx.Rngs(0))     # the task's model and inference's, the same tree
    info = interface.check_system(model)                              # SystemInterface: rates, queries, outputs

A builder is ``build(config, context, rngs) -> nnx.Module`` where ``config`` is the run's resolved config and
``context`` a small JSON-able dict of what the config alone does not say (class count and names, a frozen
sub-network's config, the digest of frozen weights). A task writes its context at prepare time
(``write_context``, ``<workdir>/system_context.json``), so inference rebuilds the model of a run from the run alone.
Builders are named as ``"module:function"`` and imported lazily, so a system's dependencies load only when used.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from flax import nnx
import ml_collections

CONTEXT_FILE = "system_context.json"

# config.model.name -> "module:builder".
SYSTEMS: dict[str, str] = {
    "resunet30": "uss_jax.models.uss:build_uss_system",
    "mae_resunet": "uss_jax.models.uss:build_uss_system",
    "soundbeam": "uss_jax.models.extraction:build_tse_system",
    "waveformer": "uss_jax.models.extraction:build_tse_system",
    "care_sep": "uss_jax.models.swin_unet:build_care_sep_system",
    "st_sed_sep": "uss_jax.models.zs_asp:build_st_sed_sep_system",
    "soundfilter": "uss_jax.models.soundfilter:build_soundfilter_system",
}

# config.task -> the model name used when a task's config has no model.name (older runs).
_DEFAULT_MODEL_OF_TASK = {"separation": "resunet30", "tse": "soundbeam", "soundfilter": "soundfilter"}


def system_name(config: ml_collections.ConfigDict) -> str:
  """The registry name of a run's system: ``config.model.name`` (or the task's default for older configs).

  Raises:
    ValueError: the config names no system and its task has no default.
  """
  model = config.get("model") or {}
  name = model.get("name") if hasattr(model, "get") else None
  name = name or _DEFAULT_MODEL_OF_TASK.get(config.get("task", ""))
  if not name:
    raise ValueError(f"config.model.name is not set (task {config.get('task')!r}): not a separation system")
  return str(name)


def builder(name: str) -> Callable[..., nnx.Module]:
  """The builder function registered as ``name``.

  Raises:
    ValueError: unknown name (the message lists the registered systems).
  """
  if name not in SYSTEMS:
    raise ValueError(f"config.model.name: unknown separation system {name!r}; registered: {sorted(SYSTEMS)}")
  module, fn = SYSTEMS[name].split(":")
  return getattr(importlib.import_module(module), fn)


def build_system(config: ml_collections.ConfigDict, context: Mapping[str, Any], rngs: nnx.Rngs) -> nnx.Module:
  """Builds the system of ``config`` (``config.model.name``) with ``context`` (see module docstring).

  Use under ``nnx.eval_shape`` for an abstract model whose values are then restored from a checkpoint.
  """
  return builder(system_name(config))(config, dict(context), rngs)


def text_tokenizer(config: ml_collections.ConfigDict, context: Mapping[str, Any]) -> Callable[[list[str]], Any]:
  """The host-side tokenizer of a system with text queries: ``callable(list[str]) -> (token_ids (batch, tokens),
  attention_mask (batch, tokens))`` numpy int arrays, from the function ``text_tokenizer(config, context)`` beside
  the system's builder.

  Raises:
    ValueError: the system's module defines no ``text_tokenizer``.
  """
  name = system_name(config)
  module = importlib.import_module(SYSTEMS[name].split(":")[0]) if name in SYSTEMS else None
  fn = getattr(module, "text_tokenizer", None)
  if fn is None:
    raise ValueError(f"system {name!r} has no text tokenizer (its builder module defines no text_tokenizer)")
  return fn(config, dict(context))


def write_context(workdir: str, context: Mapping[str, Any]) -> None:
  """Writes ``<workdir>/system_context.json`` atomically (temporary name, then rename); call on process 0."""
  from uss_jax import io  # pylint: disable=import-outside-toplevel

  io.write_text_atomic(os.path.join(workdir, CONTEXT_FILE), json.dumps(dict(context), indent=1, default=_json))


def read_context(workdir: str) -> dict[str, Any] | None:
  """The context a task wrote into ``workdir``; None when the run has none (older runs)."""
  from uss_jax import io  # pylint: disable=import-outside-toplevel

  path = os.path.join(workdir, CONTEXT_FILE)
  if not io.exists(path):
    return None
  return json.loads(io.read_text(path))


def _json(value: Any) -> Any:
  if hasattr(value, "to_dict"):
    return value.to_dict()
  if hasattr(value, "tolist"):
    return value.tolist()
  raise TypeError(f"not JSON-serialisable in a system context: {type(value).__name__}")
