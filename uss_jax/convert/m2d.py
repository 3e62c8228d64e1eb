"""Released M2D checkpoints (nttcslab/m2d, timm ViT keys + ``norm_stats``) -> ``uss_jax.models.m2d.M2D``.

Files: the zip folders of the M2D release hold a ``.pth`` whose folder name encodes the configuration
(``m2d_as_vit_base-80x608p16x16-240213``: input 80 x 608, patch 16 x 16; ``...-80x200p80x2-...``: 80 x 2 patches),
``{'model': state_dict, ...}`` or a bare state_dict (``util/to_encoder_only_weight.py``). Read without unpickling
code: ``torch.load(weights_only=True)`` where torch is installed, else a ``.safetensors`` / ``.npz`` copy
(``uss_jax.convert.common.load_state_dict``).

=========================================================  =========================================================
PyTorch key (shape)                                         Flax path (shape)
=========================================================  =========================================================
``cls_token`` (1, 1, D)                                     ``cls_token``
``pos_embed`` (1, 1 + F_p T_p, D), (f t) order              ``pos_embed`` (fixed table, copied verbatim)
``patch_embed.proj.weight`` (D, 1, pf, pt) / ``.bias``      ``patch_embed.proj.kernel`` (pt, pf, 1, D) / ``.bias``
``blocks.{i}.norm{1,2}.weight`` / ``.bias``                 ``blocks.{i}.norm{1,2}.scale`` / ``.bias``
``blocks.{i}.attn.qkv.weight`` (3D, D) / ``.bias``         ``blocks.{i}.attn.qkv.kernel``: the transpose reshaped to
                                                            the model's (D, 3D) or (D, 3, heads, head_dim)
``blocks.{i}.attn.proj`` / ``mlp.fc{1,2}``                  ``.kernel`` (transposed) / ``.bias``
``norm.weight`` / ``.bias``                                 ``norm.scale`` / ``.bias``
``norm_stats`` (2,) (mean, std of the log-mel)              ``norm_stats``
=========================================================  =========================================================

Dropped (listed in the report): the training-only parts ``m2d/runtime_audio.py`` ``drop_non_encoder_weights``
removes, i.e. keys starting with ``decoder`` (predictor), ``target`` (the EMA target network) and ``mask_token``.
Prefixes ``module.ar.runtime.backbone.`` (EVAR fine-tuning files) and ``module.`` are removed. Any other key, a missing
key or a wrong shape is refused with the key named. A checkpoint without ``norm_stats`` (old files) needs
``norm_stats=(mean, std)`` from the caller (portable_m2d's fallback is (-7.1, 4.2)).
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from uss_jax.convert import common
from uss_jax.models import m2d as m2d_lib

DROPPED_PREFIXES = ("decoder", "target", "mask_token")
STRIPPED_PREFIXES = ("module.ar.runtime.backbone.", "module.")


def patch_kernel(w: np.ndarray) -> np.ndarray:
  """``Conv2d`` weight ``(D, 1, pf, pt)`` over ``(B, 1, F, T)`` -> ``vit.PatchEmbed`` kernel ``(pt, pf, 1, D)`` over
  ``(B, T, F, 1)``."""
  if np.ndim(w) != 4:
    raise ValueError(f"patch_embed.proj.weight: expected 4 dims, got shape {np.shape(w)}")
  return np.ascontiguousarray(np.asarray(w).transpose(3, 2, 1, 0))


def _patch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  """Flax ``(pt, pf, 1, D)`` -> PyTorch ``(D, 1, pf, pt)``."""
  return (shape[3], shape[2], shape[1], shape[0])


def _key_map(model: m2d_lib.M2D) -> dict[str, common.KeyMapEntry]:
  table: dict[str, common.KeyMapEntry] = {
      "cls_token": (("cls_token",), common.identity, common.same_shape),
      "pos_embed": (("pos_embed",), common.identity, common.same_shape),
      "patch_embed.proj.weight": (("patch_embed", "proj", "kernel"), patch_kernel, _patch_shape),
      "patch_embed.proj.bias": (("patch_embed", "proj", "bias"), common.identity, common.same_shape),
      "norm.weight": (("norm", "scale"), common.identity, common.same_shape),
      "norm.bias": (("norm", "bias"), common.identity, common.same_shape),
      "norm_stats": (("norm_stats",), common.identity, common.same_shape),
  }
  for i in range(model.depth):
    for name in ("norm1", "norm2"):
      table[f"blocks.{i}.{name}.weight"] = (("blocks", i, name, "scale"), common.identity, common.same_shape)
      table[f"blocks.{i}.{name}.bias"] = (("blocks", i, name, "bias"), common.identity, common.same_shape)
    qkv = model.blocks[i].attn.qkv
    kshape, bshape = tuple(qkv.kernel.shape), tuple(qkv.bias.shape)
    # A fused qkv kernel may be (D, 3D) or (D, 3, heads, head_dim) (uss_jax.nn.attention.FusedQKV): PyTorch's
    # qkv.weight.T reshaped.
    table[f"blocks.{i}.attn.qkv.weight"] = (
        ("blocks", i, "attn", "qkv", "kernel"), lambda w, shape=kshape: common.linear_kernel(w).reshape(shape),
        lambda shape: (int(np.prod(shape[1:])), shape[0]))
    table[f"blocks.{i}.attn.qkv.bias"] = (("blocks", i, "attn", "qkv", "bias"),
                                          lambda w, shape=bshape: np.asarray(w).reshape(shape),
                                          lambda shape: (int(np.prod(shape)),))
    for torch_name, path in (("attn.proj", ("attn", "proj")), ("mlp.fc1", ("mlp", "fc1")),
                             ("mlp.fc2", ("mlp", "fc2"))):
      table[f"blocks.{i}.{torch_name}.weight"] = (("blocks", i) + path + ("kernel",), common.linear_kernel,
                                                  common.transposed_shape)
      table[f"blocks.{i}.{torch_name}.bias"] = (("blocks", i) + path + ("bias",), common.identity, common.same_shape)
  return table


def _variables(model: m2d_lib.M2D) -> dict[tuple[Any, ...], nnx.Variable]:
  return {tuple(p): v for p, v in nnx.to_flat_state(nnx.state(model, nnx.Variable))}


def torch_shapes(model: m2d_lib.M2D) -> dict[str, tuple[int, ...]]:
  """The released checkpoint's encoder keys and PyTorch shapes for ``model`` (``norm_stats`` included); tests build
  rule state_dicts from it (``common.rule_state_dict(list(torch_shapes(m).items()))``)."""
  variables = _variables(model)
  return {k: tuple(int(d) for d in to_torch(tuple(variables[path].shape)))
          for k, (path, _, to_torch) in _key_map(model).items()}


def normalize_keys(state_dict: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
  """Strips the EVAR / DDP prefixes and splits off the training-only keys: ``(encoder dict, dropped keys)``."""
  out, dropped = {}, []
  for key, value in state_dict.items():
    for prefix in STRIPPED_PREFIXES:
      if key.startswith(prefix):
        key = key[len(prefix):]
        break
    if key.startswith(DROPPED_PREFIXES):
      dropped.append(key)
    else:
      out[key] = value
  return out, sorted(dropped)


def convert_m2d(state_dict: Mapping[str, Any], model: m2d_lib.M2D, *,
                norm_stats: Sequence[float] | None = None) -> dict[str, list[str]]:
  """Loads an M2D state_dict into ``model`` in place (strict).

  Args:
    state_dict: ``{key: array}`` (PyTorch layout).
    model: the target (may be abstract, from ``nnx.eval_shape``).
    norm_stats: ``(mean, std)`` for a checkpoint without ``norm_stats`` (ignored when the checkpoint has them).

  Returns:
    ``{'loaded': [...], 'dropped': [...]}``.

  Raises:
    ValueError: naming unknown keys, missing keys (``norm_stats`` with a hint) and shape mismatches.
  """
  sd, dropped = normalize_keys(state_dict)
  if "norm_stats" not in sd and norm_stats is not None:
    sd["norm_stats"] = np.asarray(norm_stats, np.float32)
  table = _key_map(model)
  expected = torch_shapes(model)
  unknown = sorted(k for k in sd if k not in table)
  missing = sorted(k for k in table if k not in sd)
  bad = sorted(f"{k}: checkpoint {tuple(np.shape(sd[k]))} vs model (PyTorch layout) {expected[k]}"
               for k in table if k in sd and tuple(np.shape(sd[k])) != expected[k])
  if unknown or missing or bad:
    hint = " (an old checkpoint without norm_stats: pass norm_stats=(mean, std))" if "norm_stats" in missing else ""
    raise ValueError(f"M2D checkpoint does not match the model{hint}: unknown keys {unknown}; missing keys "
                     f"{missing}; shape mismatches {bad}")
  variables = _variables(model)
  for key, (path, transform, _) in table.items():
    var = variables[path]
    var.set_value(jnp.asarray(transform(np.asarray(sd[key], np.float32)), dtype=var.dtype))
  return {"loaded": sorted(table), "dropped": dropped}


def parse_name(name: str) -> dict[str, Any]:
  """``'m2d_as_vit_base-80x608p16x16-240213'`` -> ``{'img_size': (80, 608), 'patch_size': (16, 16)}`` (M2D's
  ``parse_sizes_by_name``; a ``p32k`` third field is not supported here).

  Raises:
    ValueError: a name without the ``<F>x<T>p<pf>x<pt>`` field.
  """
  m = re.search(r"-(\d+)x(\d+)p(\d+)x(\d+)", name)
  if not m:
    raise ValueError(f"cannot read the M2D input / patch size from {name!r} (expected '...-80x608p16x16-...')")
  f, t, pf, pt = (int(g) for g in m.groups())
  return {"img_size": (f, t), "patch_size": (pf, pt)}


def infer_config(state_dict: Mapping[str, Any], *, bins: int = 80) -> dict[str, Any]:
  """``M2D`` arguments implied by the weights: width, depth, heads (from the preset of that width), patch size
  and the nominal frames (``pos_embed`` rows / frequency patches x patch time).

  Raises:
    ValueError: keys needed for the inference are missing, or an inconsistent ``pos_embed``.
  """
  sd, _ = normalize_keys(state_dict)
  try:
    d, _, pf, pt = (int(x) for x in np.shape(sd["patch_embed.proj.weight"]))
    rows = int(np.shape(sd["pos_embed"])[1]) - 1
    hidden = int(np.shape(sd["blocks.0.mlp.fc1.weight"])[0])
  except KeyError as e:
    raise ValueError(f"M2D checkpoint lacks {e.args[0]!r}") from e
  depth = len({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
  fp = bins // pf
  tp, rem = divmod(rows, fp)
  if rem:
    raise ValueError(f"pos_embed has {rows} patch rows, not a multiple of {fp} frequency patches")
  heads = {p["embed_dim"]: p["num_heads"] for p in m2d_lib.M2D_PRESETS.values()}.get(d, max(d // 64, 1))
  return {"img_size": (bins, tp * pt), "patch_size": (pf, pt), "embed_dim": d, "depth": depth, "num_heads": heads,
          "mlp_ratio": hidden / d}


def load_m2d_checkpoint(path: common.PathLike, *, causal: bool = False, key: str | None = "model",
                        norm_stats: Sequence[float] | None = None, **model_kwargs: Any) -> m2d_lib.M2D:
  """Reads a released M2D checkpoint (``.pth`` with torch, or a ``.safetensors`` / ``.npz`` copy) into an ``M2D``.

  The sizes come from the weights (``infer_config``), checked against the folder name when it has the
  ``<F>x<T>p<pf>x<pt>`` field; ``causal=True`` gives the causal variant with the same weights (seed 002 Sec. V-C).

  Raises:
    ImportError: a torch file without torch. ValueError: a mismatch (``convert_m2d``) or a folder name that
    disagrees with the weights.
  """
  path = pathlib.Path(path)
  try:
    sd = common.load_state_dict(path, key=key)
  except ValueError:
    sd = common.load_state_dict(path, key=None)  # an encoder-only (bare) state_dict
  kwargs = infer_config(sd)
  try:
    named = parse_name(path.parent.name)
  except ValueError:
    named = None
  if named is not None and tuple(named["patch_size"]) != tuple(kwargs["patch_size"]):
    raise ValueError(f"{path}: the folder name says patch {named['patch_size']}, the weights {kwargs['patch_size']}")
  if named is not None:
    kwargs["img_size"] = named["img_size"]
  kwargs.update(model_kwargs)
  model = nnx.eval_shape(lambda: m2d_lib.M2D(causal=causal, rngs=nnx.Rngs(0), **kwargs))
  convert_m2d(sd, model, norm_stats=norm_stats)
  return model
