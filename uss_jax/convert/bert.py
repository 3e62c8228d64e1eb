"""HF BERT-family checkpoints (``BertModel`` key names, safetensors) -> ``uss_jax.models.bert.Bert``, strictly.

Source of the names: huggingface/transformers ``models/bert/modeling_bert.py``. A checkpoint directory holds
``config.json`` (architecture) and ``model.safetensors`` (the ``pytorch_model.bin`` of older uploads is read with
``torch.load(weights_only=True)`` only where torch is installed). Keys may carry a ``bert.`` prefix (``BertFor*``
models); heads outside the encoder (``cls.*`` MLM / NSP heads, ``classifier.*``, ``qa_outputs.*``) are reported as
ignored, never loaded.

Key map (PyTorch -> Flax NNX path; ``weight`` (out, in) of a Linear becomes ``kernel`` (in, out)):

========================================================  ===============================================
``embeddings.{word,position,token_type}_embeddings.weight``  ``embeddings.<same>.embedding``
``embeddings.LayerNorm.{weight,bias}``                      ``embeddings.norm.{scale,bias}``
``encoder.layer.i.attention.self.{query,key,value}``        ``layers.i.{query,key,value}``
``encoder.layer.i.attention.output.dense``                  ``layers.i.attention_output``
``encoder.layer.i.attention.output.LayerNorm``              ``layers.i.attention_norm``
``encoder.layer.i.intermediate.dense``                      ``layers.i.intermediate``
``encoder.layer.i.output.dense`` / ``.output.LayerNorm``    ``layers.i.output`` / ``layers.i.output_norm``
``pooler.dense``                                            ``pooler``
========================================================  ===============================================

The buffer ``embeddings.position_ids`` (older transformers) is checked (must be ``arange``), not loaded. Old TF-port
names ``LayerNorm.gamma`` / ``.beta`` are accepted for ``weight`` / ``bias``. Strict: an unknown key, a missing key or
a wrong shape is refused with the key named; architectures other than absolute-position, GELU BERT are refused with
the ``config.json`` field named.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from uss_jax.convert import common
from uss_jax.models import bert as bert_lib

IGNORED_PREFIXES = ("cls.", "classifier.", "qa_outputs.", "lm_head.")
BUFFERS = ("embeddings.position_ids",)
BERT_MODEL_TYPES = ("bert",)  # HF model_type values with the BertModel key set and forward


def config_from_hf(hf: Mapping[str, Any], *, where: str = "config.json") -> bert_lib.BertConfig:
  """The ``BertConfig`` of an HF ``config.json`` dict.

  Raises:
    ValueError: a ``model_type`` other than BERT, a ``hidden_act`` other than ``gelu``, a ``position_embedding_type``
      other than ``absolute`` or a missing size field (the message names ``where`` and the field).
  """
  model_type = hf.get("model_type", "bert")
  if model_type not in BERT_MODEL_TYPES:
    raise ValueError(f"{where}: model_type={model_type!r} is not a BERT checkpoint (expected one of "
                     f"{BERT_MODEL_TYPES})")
  if hf.get("hidden_act", "gelu") != "gelu":
    raise ValueError(f"{where}: hidden_act={hf.get('hidden_act')!r} is not supported (only 'gelu', the erf form)")
  if hf.get("position_embedding_type", "absolute") != "absolute":
    raise ValueError(f"{where}: position_embedding_type={hf.get('position_embedding_type')!r} is not supported "
                     "(only 'absolute')")
  needed = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
  missing = [k for k in needed if k not in hf]
  if missing:
    raise ValueError(f"{where}: missing field(s) {missing}")
  return bert_lib.BertConfig.from_dict(hf)


def key_map(cfg: bert_lib.BertConfig) -> dict[str, common.KeyMapEntry]:
  """PyTorch key (no ``bert.`` prefix) -> (Flax path, transform, Flax -> PyTorch shape map) of a ``Bert(cfg)``."""
  table: dict[str, common.KeyMapEntry] = {}

  def linear(name: str, path: tuple[Any, ...]) -> None:
    table[f"{name}.weight"] = (path + ("kernel",), common.linear_kernel, common.transposed_shape)
    table[f"{name}.bias"] = (path + ("bias",), common.identity, common.same_shape)

  def norm(name: str, path: tuple[Any, ...]) -> None:
    table[f"{name}.weight"] = (path + ("scale",), common.identity, common.same_shape)
    table[f"{name}.bias"] = (path + ("bias",), common.identity, common.same_shape)

  for emb in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
    table[f"embeddings.{emb}.weight"] = (("embeddings", emb, "embedding"), common.identity, common.same_shape)
  norm("embeddings.LayerNorm", ("embeddings", "norm"))
  for i in range(cfg.num_hidden_layers):
    p, lp = f"encoder.layer.{i}.", ("layers", i)
    for name in ("query", "key", "value"):
      linear(p + f"attention.self.{name}", lp + (name,))
    linear(p + "attention.output.dense", lp + ("attention_output",))
    norm(p + "attention.output.LayerNorm", lp + ("attention_norm",))
    linear(p + "intermediate.dense", lp + ("intermediate",))
    linear(p + "output.dense", lp + ("output",))
    norm(p + "output.LayerNorm", lp + ("output_norm",))
  if cfg.pooler:
    linear("pooler.dense", ("pooler",))
  return table


def _canonical(state_dict: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], list[str]]:
  """Keys without the ``bert.`` prefix and with ``gamma``/``beta`` renamed; the ignored head keys apart."""
  out, ignored = {}, []
  prefixed = any(k.startswith("bert.") for k in state_dict)
  for k, v in state_dict.items():
    name = k[len("bert."):] if prefixed and k.startswith("bert.") else k
    if name.startswith(IGNORED_PREFIXES) or (prefixed and not k.startswith("bert.")):
      ignored.append(k)
      continue
    if name.endswith("LayerNorm.gamma"):
      name = name[:-len("gamma")] + "weight"
    elif name.endswith("LayerNorm.beta"):
      name = name[:-len("beta")] + "bias"
    out[name] = np.asarray(v)
  return out, sorted(ignored)


def has_pooler(state_dict: Mapping[str, Any]) -> bool:
  """Whether the checkpoint carries BERT's pooler (``pooler.dense.*``, with or without the ``bert.`` prefix)."""
  return any(k.endswith("pooler.dense.weight") for k in state_dict)


def convert_bert(state_dict: Mapping[str, Any], model: bert_lib.Bert) -> dict[str, list[str]]:
  """Loads an HF BERT state_dict into ``model`` (may be abstract, from ``nnx.eval_shape``) in place, strictly.

  Returns:
    ``{'loaded': [...], 'buffers': [...], 'ignored': [...]}`` key lists.

  Raises:
    ValueError: unknown keys, missing keys, shape mismatches (PyTorch layout, each named), or a ``position_ids``
      buffer that is not ``arange``.
  """
  sd, ignored = _canonical(state_dict)
  table = key_map(model.config)
  unknown, buffers, bad = [], [], []
  for k, v in sd.items():
    if k in table:
      continue
    if k in BUFFERS:
      want = np.arange(np.shape(v)[-1])
      if np.asarray(v).reshape(-1).tolist() != want.tolist():
        bad.append(f"{k}: not arange({want.size})")
      buffers.append(k)
      continue
    unknown.append(k)
  missing = sorted(k for k in table if k not in sd)
  variables = {tuple(p): var for p, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  for k, (path, _, to_torch) in table.items():
    if k in sd and path in variables:
      want = to_torch(tuple(variables[path].shape))
      if tuple(np.shape(sd[k])) != want:
        bad.append(f"{k}: checkpoint {tuple(np.shape(sd[k]))} vs model (PyTorch layout) {want}")
  if unknown or missing or bad:
    raise ValueError(f"BERT checkpoint does not match the model: unknown keys {sorted(unknown)}; missing keys "
                     f"{missing}; shape mismatches / bad buffers {sorted(bad)}")
  values = {path: transform(np.asarray(sd[k], np.float32)) for k, (path, transform, _) in table.items()}
  common.assign_flat(model, values)
  return {"loaded": sorted(table), "buffers": sorted(buffers), "ignored": ignored}


def read_checkpoint_dir(path: common.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """``(config.json dict, state_dict)`` of an HF checkpoint directory (``model.safetensors`` preferred, else
  ``pytorch_model.bin`` through ``common.load_state_dict``).

  Raises:
    FileNotFoundError: no directory, no ``config.json`` or no weights file (the path is named).
    ValueError: an unreadable ``config.json``.
  """
  d = pathlib.Path(path)
  if not d.is_dir():
    raise FileNotFoundError(f"{d}: not a checkpoint directory (expected config.json + model.safetensors)")
  cfg_path = d / "config.json"
  if not cfg_path.exists():
    raise FileNotFoundError(f"{cfg_path}: missing (an HF BERT checkpoint directory has config.json)")
  try:
    hf = json.loads(cfg_path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{cfg_path}: not JSON: {e}") from e
  for name in ("model.safetensors", "pytorch_model.bin"):
    if (d / name).exists():
      return hf, common.load_state_dict(os.fspath(d / name))
  raise FileNotFoundError(f"{d}: no model.safetensors (or pytorch_model.bin)")


def load_bert_checkpoint(path: common.PathLike, *, dtype: Any = None,
                         rngs: nnx.Rngs | None = None) -> tuple[bert_lib.Bert, dict[str, list[str]]]:
  """A ``Bert`` built from ``<path>/config.json`` and filled from its weights (``convert_bert``).

  Returns:
    ``(model, report)``; the model's ``config.pooler`` follows whether the checkpoint has a pooler.

  Raises:
    as ``read_checkpoint_dir``, ``config_from_hf`` and ``convert_bert``.
  """
  hf, sd = read_checkpoint_dir(path)
  cfg = config_from_hf({**hf, "pooler": has_pooler(sd)}, where=os.fspath(pathlib.Path(path) / "config.json"))
  model = nnx.eval_shape(lambda: bert_lib.Bert(cfg, dtype=dtype, rngs=rngs or nnx.Rngs(0)))
  report = convert_bert(sd, model)
  return model, report
