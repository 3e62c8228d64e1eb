"""AudioMAE (timm ViT) PyTorch checkpoints -> ``uss_jax.models.vit.VisionTransformer``.

Source layout: facebookresearch/AudioMAE ``models_vit.py`` (fine-tuning model, timm 0.4.5 key names) and
``models_mae.py`` (pretraining model). Released files are dicts ``{'model': state_dict, 'optimizer', 'epoch',
'scaler', 'args'}``.

=========================================================  =========================================================
PyTorch key (shape)                                         Flax path (shape)
=========================================================  =========================================================
``cls_token`` (1, 1, D)                                     ``cls_token`` (1, 1, D)
``pos_embed`` (1, 1 + N, D)                                 ``pos_embed`` (1, 1 + N, D), copied verbatim (the model
                                                            must hold a table: ``pos_embed='table'`` / ``'learned'``)
``patch_embed.proj.weight`` (D, C, pt, pf) / ``.bias``      ``patch_embed.proj.kernel`` (pt, pf, C, D) / ``.bias``
``blocks.{i}.norm{1,2}.weight`` / ``.bias`` (D)             ``blocks.{i}.norm{1,2}.scale`` / ``.bias``
``blocks.{i}.attn.qkv.weight`` (3D, D) / ``.bias`` (3D)     ``blocks.{i}.attn.qkv.kernel`` (D, 3, H, D/H) = weight.T
                                                            reshaped (head axis) / ``.bias`` (3D)
``blocks.{i}.attn.proj.weight`` (D, D) / ``.bias``          ``blocks.{i}.attn.proj.kernel`` (D, D) / ``.bias``
``blocks.{i}.mlp.fc1.weight`` (H, D) / ``.bias`` (H)        ``blocks.{i}.mlp.fc1.kernel`` (D, H) / ``.bias``
``blocks.{i}.mlp.fc2.weight`` (D, H) / ``.bias`` (D)        ``blocks.{i}.mlp.fc2.kernel`` (H, D) / ``.bias``
``fc_norm.weight`` / ``.bias`` (global-pool models)         ``fc_norm.scale`` / ``.bias``
``norm.weight`` / ``.bias`` (pretraining encoder)           ``norm.scale`` / ``.bias``
``head.weight`` (K, D) / ``.bias`` (K)                      ``head.kernel`` (D, K) / ``.bias``
=========================================================  =========================================================

Always ignored (returned in the report): the MAE decoder of a pretraining checkpoint (``mask_token`` and every key
starting with ``decoder_``); it has its own converter. A ``'module.'`` prefix (DataParallel / DDP) is removed.
"""

from __future__ import annotations

import argparse
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from uss_jax.convert import common
from uss_jax.models.vit import VIT_PRESETS, VisionTransformer

DECODER_PREFIXES = ("decoder_", "mask_token")

_Entry = common.KeyMapEntry


def _key_map(model: VisionTransformer) -> dict[str, _Entry]:
  """PyTorch key -> (Flax path, transform, inverse shape map) for the variables ``model`` has."""
  table: dict[str, _Entry] = {
      "cls_token": (("cls_token",), common.identity, common.same_shape),
      "patch_embed.proj.weight": (("patch_embed", "proj", "kernel"), common.conv2d_kernel, common.conv2d_shape),
      "patch_embed.proj.bias": (("patch_embed", "proj", "bias"), common.identity, common.same_shape),
  }
  if model.pos_embed is not None:
    table["pos_embed"] = (("pos_embed",), common.identity, common.same_shape)

  def linear(torch_name: str, path: tuple[Any, ...]) -> None:
    table[f"{torch_name}.weight"] = (path + ("kernel",), common.linear_kernel, common.transposed_shape)
    table[f"{torch_name}.bias"] = (path + ("bias",), common.identity, common.same_shape)

  def norm(torch_name: str, path: tuple[Any, ...]) -> None:
    table[f"{torch_name}.weight"] = (path + ("scale",), common.identity, common.same_shape)
    table[f"{torch_name}.bias"] = (path + ("bias",), common.identity, common.same_shape)

  for i in range(len(model.blocks)):
    norm(f"blocks.{i}.norm1", ("blocks", i, "norm1"))
    table.update(common.qkv_entries(f"blocks.{i}.attn.qkv", ("blocks", i, "attn", "qkv"), model.num_heads))
    linear(f"blocks.{i}.attn.proj", ("blocks", i, "attn", "proj"))
    norm(f"blocks.{i}.norm2", ("blocks", i, "norm2"))
    linear(f"blocks.{i}.mlp.fc1", ("blocks", i, "mlp", "fc1"))
    linear(f"blocks.{i}.mlp.fc2", ("blocks", i, "mlp", "fc2"))
  if model.fc_norm is not None:
    norm("fc_norm", ("fc_norm",))
  if model.norm is not None:
    norm("norm", ("norm",))
  if model.head is not None:
    linear("head", ("head",))
  return table


def _model_variables(model: VisionTransformer) -> dict[tuple[Any, ...], nnx.Variable]:
  flat = nnx.to_flat_state(nnx.state(model, nnx.Variable))
  return {tuple(p): v for p, v in flat}


def _assign(model: VisionTransformer, values: Mapping[tuple[Any, ...], np.ndarray]) -> None:
  """Writes ``{path: array}`` into every state variable of ``model`` (``nnx.Param`` and the fixed ``PosEmbedTable``).

  Like ``common.assign_flat`` (which covers ``Param`` / ``BatchStat`` only): all paths must exist, every variable
  must get a value, shapes must agree; an abstract model (``nnx.eval_shape``) becomes concrete.
  """
  variables = _model_variables(model)
  unknown = sorted(str(p) for p in values if p not in variables)
  missing = sorted(str(p) for p in variables if p not in values)
  bad = sorted(f"{p}: model {tuple(variables[p].shape)} vs given {np.shape(v)}"
               for p, v in values.items() if p in variables and tuple(variables[p].shape) != np.shape(v))
  if unknown or missing or bad:
    raise ValueError(f"cannot assign: unknown paths {unknown}; model variables without a value {missing}; "
                     f"shape mismatches {bad}")
  for path, value in values.items():
    var = variables[path]
    var.set_value(jnp.asarray(value, dtype=var.dtype))


def torch_shapes(model: VisionTransformer) -> dict[str, tuple[int, ...]]:
  """The PyTorch state_dict keys and shapes a checkpoint for ``model`` has (decoder keys excluded), in timm order.

  Used by tests to build rule state_dicts for small models: ``common.rule_state_dict(list(torch_shapes(m).items()))``.
  """
  variables = _model_variables(model)
  return {key: tuple(int(d) for d in to_torch(tuple(variables[path].shape)))
          for key, (path, _, to_torch) in _key_map(model).items()}


def is_decoder_key(key: str) -> bool:
  """True for the MAE decoder entries of a pretraining checkpoint (``mask_token``, ``decoder_*``)."""
  return key.startswith(DECODER_PREFIXES)


def convert_audiomae(state_dict: Mapping[str, Any], model: VisionTransformer, *,
                     strict: bool = True) -> dict[str, list[str]]:
  """Loads an AudioMAE / timm ViT state_dict into ``model`` in place.

  ``strict=True``: every model variable gets a value and every checkpoint key (decoder keys aside) has a place, with
  equal shapes. ``strict=False`` (fine-tuning from a pretraining checkpoint, as AudioMAE's ``load_state_dict(...,
  strict=False)``): checkpoint keys the model lacks (e.g. ``norm`` for a global-pool model, a ``head`` you dropped
  from the dict) are skipped and model variables the checkpoint lacks (e.g. ``fc_norm``, ``head``) keep their
  current values; shape mismatches still raise.

  Args:
    state_dict: ``{key: array}`` in PyTorch layout (numpy arrays or anything ``np.asarray`` accepts), e.g. from
      ``load_state_dict``.
    model: the target (may be abstract, from ``nnx.eval_shape``, when ``strict=True``).
    strict: see above.

  Returns:
    ``{'loaded': [...], 'ignored_decoder': [...], 'skipped': [...], 'kept': [...]}``: checkpoint keys written,
    decoder keys ignored, checkpoint keys without a place (``strict=False``), PyTorch names of model variables left
    unchanged (``strict=False``).

  Raises:
    ValueError: listing unknown keys and missing keys (strict), shape mismatches, a checkpoint ``pos_embed`` for a
      model with ``pos_embed='sincos'`` (strict; build it with ``pos_embed='table'``), or, with ``strict=False``,
      model variables left without a value on an abstract model.
  """
  state_dict = common.strip_prefix(dict(state_dict), "module.")
  table = _key_map(model)
  decoder = sorted(k for k in state_dict if is_decoder_key(k))
  unknown = sorted(k for k in state_dict if k not in table and not is_decoder_key(k))
  missing = sorted(k for k in table if k not in state_dict)
  expected = torch_shapes(model)
  bad = sorted(f"{k}: checkpoint {tuple(np.shape(state_dict[k]))} vs model (PyTorch layout) {expected[k]}"
               for k in table if k in state_dict and tuple(np.shape(state_dict[k])) != expected[k])
  if bad or (strict and (unknown or missing)):
    hint = ""
    if strict and "pos_embed" in unknown and model.pos_embed is None:
      hint = (" (the checkpoint has a pos_embed table but the model generates sin-cos on the fly: build it with "
              "pos_embed='table')")
    raise ValueError(f"AudioMAE checkpoint does not match the model{hint}: unknown keys {unknown}; missing keys "
                     f"{missing}; shape mismatches {bad}")
  values = {path: transform(np.asarray(state_dict[key], dtype=np.float32))
            for key, (path, transform, _) in table.items() if key in state_dict}
  variables = _model_variables(model)
  if missing:  # strict=False: keep the model's own values
    for key in missing:
      path = table[key][0]
      value = variables[path].get_value()
      if isinstance(value, jax.ShapeDtypeStruct):
        raise ValueError(f"strict=False on an abstract model: {key} has no value in the checkpoint")
      values[path] = np.asarray(value)
  _assign(model, values)
  return {"loaded": sorted(k for k in table if k in state_dict), "ignored_decoder": decoder, "skipped": unknown,
          "kept": missing}


# --------------------------------------------------------------------------------------------------------------------
# Checkpoint files.
# --------------------------------------------------------------------------------------------------------------------


def load_state_dict(path: common.PathLike, *, key: str | None = "model") -> dict[str, np.ndarray]:
  """Reads an AudioMAE checkpoint's state_dict as ``{name: numpy array}`` (PyTorch layout), without unsafe unpickling.

  ``.safetensors`` / ``.npz``: ``common.load_state_dict`` (numpy only; keys may carry a ``'model.'`` prefix). A torch
  file (``.pth``): ``torch.load(weights_only=True)`` with ``argparse.Namespace`` added to the allowed globals,
  because the released files store the training arguments under ``'args'`` as a ``Namespace`` (which the plain
  weights-only loader refuses). A ``'module.'`` prefix is removed.

  Args:
    path: the file.
    key: entry holding the state_dict (``'model'``); None for a bare state_dict.

  Raises:
    ImportError: a torch file without torch installed (convert it to ``.safetensors`` / ``.npz`` first).
    ValueError: ``key`` missing or not a mapping of tensors.
  """
  path = pathlib.Path(path)
  if path.suffix.lower() in (".safetensors", ".npz"):
    return common.strip_prefix(common.load_state_dict(path, key=key), "module.")
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    return common.load_state_dict(path, key=key)  # raises the ImportError with the conversion hint
  with torch.serialization.safe_globals([argparse.Namespace]):
    obj = torch.load(path, map_location="cpu", weights_only=True)
  if key is not None:
    if not isinstance(obj, Mapping) or key not in obj:
      found = sorted(obj) if isinstance(obj, Mapping) else type(obj).__name__
      raise ValueError(f"{path}: no entry {key!r} in the checkpoint (found {found})")
    obj = obj[key]
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path}: expected a state_dict mapping, got {type(obj).__name__}")
  out = {}
  for name, value in obj.items():
    if not isinstance(value, torch.Tensor):
      raise ValueError(f"{path}: state_dict entry {name!r} is a {type(value).__name__}, not a tensor")
    out[name] = value.detach().cpu().float().numpy().copy()
  return common.strip_prefix(out, "module.")


def infer_config(state_dict: Mapping[str, Any], *, mel_bins: int = 128) -> dict[str, Any]:
  """``VisionTransformer`` arguments implied by a state_dict: widths, depth, patch, classes, pooling, img_size.

  ``num_heads`` is not stored in the weights: it is taken from the preset of the same width (``VIT_PRESETS``: 384 ->
  6, 768 -> 12, 1024 / 1280 -> 16), else ``embed_dim // 64``. ``img_size`` = ``(frames, mel_bins)`` with
  ``frames = (T0 - 1) * patch + patch`` for the ``T0 = N / F0`` time rows of ``pos_embed`` (stride = patch; pass
  ``stride`` / ``img_size`` yourself for overlapping patches). ``global_pool`` is True when ``fc_norm`` is present;
  ``num_classes`` = ``head`` rows, 0 without a head; ``pos_embed='table'``; ``drop_path=0``.

  Raises:
    ValueError: keys needed for the inference are missing, or the blocks are not numbered 0..depth-1.
  """
  try:
    embed_dim = int(np.shape(state_dict["cls_token"])[-1])
    proj = np.shape(state_dict["patch_embed.proj.weight"])
    pos_rows = int(np.shape(state_dict["pos_embed"])[1])
    hidden = int(np.shape(state_dict["blocks.0.mlp.fc1.weight"])[0])
  except KeyError as e:
    raise ValueError(f"AudioMAE checkpoint lacks {e.args[0]!r}") from e
  blocks = sorted({int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))})
  if blocks != list(range(len(blocks))):
    raise ValueError(f"cannot infer the depth: blocks numbered {blocks}")
  patch = (int(proj[2]), int(proj[3]))
  freq_patches = (mel_bins - patch[1]) // patch[1] + 1
  time_patches, rem = divmod(pos_rows - 1, freq_patches)
  if rem:
    raise ValueError(f"pos_embed has {pos_rows - 1} patch rows, not a multiple of {freq_patches} frequency patches "
                     f"({mel_bins} bins); pass img_size / patch_size explicitly")
  heads = {p["embed_dim"]: p["num_heads"] for p in VIT_PRESETS.values()}.get(embed_dim, max(embed_dim // 64, 1))
  return {
      "img_size": ((time_patches - 1) * patch[0] + patch[0], mel_bins), "patch_size": patch,
      "in_channels": int(proj[1]), "embed_dim": embed_dim, "depth": len(blocks), "num_heads": heads,
      "mlp_ratio": hidden / embed_dim, "global_pool": "fc_norm.weight" in state_dict,
      "num_classes": int(np.shape(state_dict["head.weight"])[0]) if "head.weight" in state_dict else 0,
      "drop_path": 0.0, "pos_embed": "table",
  }


def load_audiomae_checkpoint(path: common.PathLike, model: VisionTransformer | None = None, *,
                             key: str | None = "model", strict: bool = True, mel_bins: int = 128,
                             rngs: nnx.Rngs | None = None, **model_kwargs: Any) -> VisionTransformer:
  """Reads an AudioMAE checkpoint (``pretrained.pth`` / ``finetuned.pth`` or a ``.safetensors`` / ``.npz`` copy).

  Args:
    path: the file; a torch file is ``{'model': state_dict, 'optimizer', 'epoch', 'scaler', 'args'}`` (needs torch).
    model: the target; None builds one from ``infer_config`` updated with ``model_kwargs`` (e.g. ``num_heads``,
      ``drop_path=0.1`` for fine-tuning, ``mask_t_prob``), abstractly (nothing random is drawn when strict).
    key: checkpoint entry holding the state_dict (None for a bare state_dict).
    strict: see ``convert_audiomae``.
    mel_bins: frequency bins of the features the checkpoint was trained on (128), for ``infer_config``.
    rngs: RNGs for building the model (default ``nnx.Rngs(0)``).
    **model_kwargs: overrides of the inferred ``VisionTransformer`` arguments.

  Returns:
    the model holding the weights, after ``model.eval()``.

  Raises:
    ImportError: a torch file without torch installed.
    ValueError: the checkpoint does not match (``convert_audiomae``).
  """
  state_dict = load_state_dict(path, key=key)
  if model is None:
    kwargs = {**infer_config(state_dict, mel_bins=mel_bins), **model_kwargs}
    build = lambda: VisionTransformer(rngs=rngs or nnx.Rngs(0), **kwargs)  # noqa: E731
    model = nnx.eval_shape(build) if strict else build()
  convert_audiomae(state_dict, model, strict=strict)
  model.eval()
  return model
