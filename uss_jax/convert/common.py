"""Helpers shared by every PyTorch -> Flax NNX converter.

* Loading a PyTorch ``state_dict`` without unpickling untrusted code: ``torch.load(path, map_location='cpu',
  weights_only=True)`` when torch is importable (``.pth`` / ``.pt`` / ``.ckpt`` / ``.bin``); otherwise a
  ``.safetensors`` file (read here with numpy alone, no ``safetensors`` package needed) or a ``.npz`` archive
  (``numpy.load(allow_pickle=False)``). To use a ``.pth`` on a machine without torch, convert it once where torch is
  installed, e.g. ``numpy.savez(out, **{k: v.numpy() for k, v in torch.load(p, weights_only=True)['model'].items()})``.
* Layout transposes from PyTorch to Flax/JAX (channels-last, kernels ``(*spatial, in, out)``).
* ``assign_flat``: strict, shape-checked assignment of a flat ``{path: array}`` mapping onto an NNX module.
* The parity fixtures' deterministic weight rule (``tests/fixtures/parity/README.md``, "The weight rule") in numpy,
  so tests rebuild a reference state_dict from ``manifest.json`` without torch.
"""

from __future__ import annotations

import json
import os
import pathlib
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

PathLike = str | os.PathLike

# --------------------------------------------------------------------------------------------------------------------
# Loading.
# --------------------------------------------------------------------------------------------------------------------

_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def read_safetensors(path: PathLike) -> dict[str, np.ndarray]:
  """Reads a ``.safetensors`` file with numpy alone (no code execution, no ``safetensors`` package).

  Format (huggingface/safetensors README): 8-byte little-endian header length ``N``, ``N`` bytes of JSON
  ``{name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}}``, then the raw
  little-endian tensor bytes; offsets are relative to the end of the header. ``BF16`` tensors are widened to float32
  exactly.

  Args:
    path: the file.

  Returns:
    ``{name: array}`` with the stored shapes (C order).

  Raises:
    ValueError: a malformed header, an unsupported dtype, or offsets that do not fit the stored shape.
  """
  data = pathlib.Path(path).read_bytes()
  if len(data) < 8:
    raise ValueError(f"{path}: too short to be a safetensors file")
  header_len = int.from_bytes(data[:8], "little")
  if header_len <= 0 or 8 + header_len > len(data):
    raise ValueError(f"{path}: bad safetensors header length {header_len}")
  try:
    header = json.loads(data[8:8 + header_len].decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: unreadable safetensors header: {e}") from e
  if not isinstance(header, dict):
    raise ValueError(f"{path}: safetensors header is not a JSON object")
  body = memoryview(data)[8 + header_len:]
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    try:
      dtype_name, shape, (begin, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f"{path}: bad safetensors entry {name!r}: {info!r}") from e
    if not 0 <= begin <= end <= len(body):
      raise ValueError(f"{path}: entry {name!r} has offsets {begin}..{end} outside the {len(body)}-byte body")
    count = int(np.prod(shape, dtype=np.int64))
    if dtype_name == "BF16":
      if end - begin != 2 * count:
        raise ValueError(f"{path}: entry {name!r} has {end - begin} bytes for {count} bf16 values")
      bits = np.frombuffer(body[begin:end], dtype="<u2").astype(np.uint32) << 16
      out[name] = bits.view(np.float32).reshape(shape)
      continue
    if dtype_name not in _SAFETENSORS_DTYPES:
      raise ValueError(f"{path}: entry {name!r} has unsupported dtype {dtype_name}")
    dtype = np.dtype(_SAFETENSORS_DTYPES[dtype_name]).newbyteorder("<")
    if end - begin != dtype.itemsize * count:
      raise ValueError(f"{path}: entry {name!r} has {end - begin} bytes for shape {shape} {dtype_name}")
    out[name] = np.frombuffer(body[begin:end], dtype=dtype).astype(dtype.newbyteorder("="), copy=True).reshape(shape)
  return out


def write_safetensors(path: PathLike, tensors: Mapping[str, np.ndarray]) -> None:
  """Writes ``{name: array}`` as a ``.safetensors`` file (the layout ``read_safetensors`` describes).

  Args:
    path: output file.
    tensors: arrays of the dtypes in the safetensors table (float64/32/16, int64/32/16/8, uint8, bool).

  Raises:
    ValueError: an unsupported dtype.
  """
  names = {np.dtype(v): k for k, v in _SAFETENSORS_DTYPES.items()}
  header, chunks, offset = {}, [], 0
  for name, value in tensors.items():
    arr = np.ascontiguousarray(value)
    if arr.dtype not in names:
      raise ValueError(f"{name}: dtype {arr.dtype} is not supported by write_safetensors")
    raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
    header[name] = {"dtype": names[arr.dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
    chunks.append(raw)
    offset += len(raw)
  blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
  blob += b" " * (-len(blob) % 8)  # the format pads the header with spaces to an 8-byte boundary
  with open(path, "wb") as f:
    f.write(len(blob).to_bytes(8, "little"))
    f.write(blob)
    for raw in chunks:
      f.write(raw)


def _torch_to_numpy(name: str, value: Any) -> np.ndarray:
  import torch  # pylint: disable=import-outside-toplevel

  if not isinstance(value, torch.Tensor):
    raise ValueError(f"state_dict entry {name!r} is a {type(value).__name__}, not a tensor")
  value = value.detach().cpu()
  if value.dtype == torch.bfloat16:
    value = value.float()
  return value.numpy().copy()


def load_state_dict(path: PathLike, *, key: str | None = None) -> dict[str, np.ndarray]:
  """Loads a PyTorch ``state_dict`` as ``{name: numpy array}`` in PyTorch layout, without unsafe unpickling.

  * ``.safetensors``: ``read_safetensors`` (numpy only).
  * ``.npz``: ``numpy.load(path, allow_pickle=False)``.
  * anything else (``.pth``, ``.pt``, ``.ckpt``, ``.bin``): ``torch.load(path, map_location='cpu',
    weights_only=True)``; torch must be importable (it is never a dependency of this package).

  Args:
    path: the checkpoint file.
    key: for a torch checkpoint, the entry of the loaded dict that holds the state_dict (PANNs: ``'model'``).
      For ``.safetensors`` / ``.npz`` files, whose keys are flat, the entries named ``f'{key}.<name>'`` are taken with
      the prefix removed when any exist; otherwise all entries are taken as they are.

  Returns:
    ``{name: array}`` (bf16 widened to float32).

  Raises:
    ImportError: a torch checkpoint and torch is not installed (convert it to ``.safetensors`` / ``.npz`` first).
    ValueError: ``key`` missing, or the loaded object is not a mapping of tensors.
  """
  path = pathlib.Path(path)
  suffix = path.suffix.lower()
  if suffix in (".safetensors", ".npz"):
    if suffix == ".safetensors":
      flat = read_safetensors(path)
    else:
      with np.load(path, allow_pickle=False) as f:
        flat = {k: f[k] for k in f.files}
    if key is not None:
      prefix = key + "."
      picked = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
      if picked:
        flat = picked
    return flat
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
        f"{path}: reading a PyTorch checkpoint needs torch (torch.load(weights_only=True)); torch is not installed. "
        "Convert the checkpoint to .safetensors or .npz where torch is available and load that instead.") from e
  obj = torch.load(path, map_location="cpu", weights_only=True)
  if key is not None:
    if not isinstance(obj, Mapping) or key not in obj:
      found = sorted(obj) if isinstance(obj, Mapping) else type(obj).__name__
      raise ValueError(f"{path}: no entry {key!r} in the checkpoint (found {found})")
    obj = obj[key]
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path}: expected a state_dict mapping, got {type(obj).__name__}")
  return {k: _torch_to_numpy(k, v) for k, v in obj.items()}


def strip_prefix(state_dict: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
  """Removes ``prefix`` (e.g. ``'module.'`` left by ``DataParallel``) from every key that starts with it."""
  return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


# --------------------------------------------------------------------------------------------------------------------
# Layout transposes (PyTorch -> Flax).
# --------------------------------------------------------------------------------------------------------------------


def linear_kernel(w: np.ndarray) -> np.ndarray:
  """``nn.Linear.weight`` (out, in) -> ``nnx.Linear.kernel`` (in, out)."""
  _check_ndim(w, 2, "Linear weight")
  return np.ascontiguousarray(w.T)


def conv1d_kernel(w: np.ndarray) -> np.ndarray:
  """``nn.Conv1d.weight`` (out, in/groups, k) -> ``nnx.Conv`` kernel (k, in/groups, out)."""
  _check_ndim(w, 3, "Conv1d weight")
  return np.ascontiguousarray(w.transpose(2, 1, 0))


def conv2d_kernel(w: np.ndarray) -> np.ndarray:
  """``nn.Conv2d.weight`` (out, in/groups, kh, kw) -> ``nnx.Conv`` kernel (kh, kw, in/groups, out).

  Both frameworks compute a cross-correlation, so no flip is needed; PyTorch's NCHW (batch, channels, height, width)
  maps to our (batch, height, width, channels), i.e. (batch, time, freq, channels) for time-frequency maps.
  """
  _check_ndim(w, 4, "Conv2d weight")
  return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def conv_transpose1d_kernel(w: np.ndarray) -> np.ndarray:
  """``nn.ConvTranspose1d.weight`` (in, out, k) -> ``nnx.ConvTranspose`` kernel (k, in, out), flipped in time.

  Use with ``nnx.ConvTranspose(..., transpose_kernel=False, padding=conv_transpose_padding(...))``.
  """
  _check_ndim(w, 3, "ConvTranspose1d weight")
  return np.ascontiguousarray(np.flip(w, 2).transpose(2, 0, 1))


def conv_transpose2d_kernel(w: np.ndarray) -> np.ndarray:
  """``nn.ConvTranspose2d.weight`` (in, out, kh, kw) -> ``nnx.ConvTranspose`` kernel (kh, kw, in, out).

  PyTorch's transposed convolution scatters ``x[i] * W[:, :, a]`` to output ``i*stride + a`` (the gradient of a
  Conv2d); JAX's ``lax.conv_transpose`` with ``transpose_kernel=False`` correlates the stride-dilated input with the
  kernel, so the kernel is flipped in both spatial axes. Use with ``nnx.ConvTranspose(..., strides=s,
  transpose_kernel=False, padding=conv_transpose_padding(k, p, output_padding))``.
  """
  _check_ndim(w, 4, "ConvTranspose2d weight")
  return np.ascontiguousarray(np.flip(w, (2, 3)).transpose(2, 3, 0, 1))


def conv_transpose_padding(kernel_size: Sequence[int], padding: Sequence[int] = (0, 0),
                           output_padding: Sequence[int] = (0, 0)) -> tuple[tuple[int, int], ...]:
  """Flax ``ConvTranspose`` padding equal to PyTorch ``ConvTranspose{1,2}d(padding=p, output_padding=op)``.

  Per spatial axis ``(k - 1 - p, k - 1 - p + op)``; with the flipped kernel the output length is PyTorch's
  ``(n - 1) * stride - 2p + k + op`` (dilation 1).
  """
  return tuple((k - 1 - p, k - 1 - p + op) for k, p, op in zip(kernel_size, padding, output_padding, strict=True))


def _check_ndim(w: np.ndarray, ndim: int, what: str) -> None:
  if np.ndim(w) != ndim:
    raise ValueError(f"{what}: expected {ndim} dims, got shape {np.shape(w)}")


# --------------------------------------------------------------------------------------------------------------------
# Strict assignment onto an NNX module.
# --------------------------------------------------------------------------------------------------------------------


def assign_flat(model: nnx.Module, values: Mapping[tuple[Any, ...], np.ndarray], *,
                exclude: Iterable[str] = ()) -> None:
  """Writes ``{path: array}`` into ``model``'s ``nnx.Param`` / ``nnx.BatchStat`` variables, in place.

  The model may be abstract (built under ``nnx.eval_shape``, no weights allocated): every covered variable then
  receives a concrete array.

  Args:
    model: the target module; its variables keep their type, dtype and metadata (logical axis names).
    values: path tuples as in ``nnx.to_flat_state(nnx.state(model))`` (e.g. ``('conv_block1', 'conv1', 'kernel')``).
    exclude: top-level attribute names whose variables need no value (e.g. a front end).

  Raises:
    ValueError: listing paths the model lacks, model variables left without a value, and shape mismatches.
  """
  exclude = set(exclude)
  flat = nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))
  variables = {tuple(path): var for path, var in flat if not (path and path[0] in exclude)}
  unknown = sorted(str(p) for p in values if tuple(p) not in variables)
  missing = sorted(str(p) for p in variables if p not in values)
  bad = sorted(f"{p}: model {tuple(variables[tuple(p)].shape)} vs given {np.shape(v)}"
               for p, v in values.items() if tuple(p) in variables and tuple(variables[tuple(p)].shape) != np.shape(v))
  if unknown or missing or bad:
    raise ValueError(f"cannot assign: unknown paths {unknown}; model variables without a value {missing}; "
                     f"shape mismatches {bad}")
  for path, value in values.items():
    var = variables[tuple(path)]
    var.set_value(jnp.asarray(value, dtype=var.dtype))  # also fills an abstract model from nnx.eval_shape


# --------------------------------------------------------------------------------------------------------------------
# The parity fixtures' weight rule (tests/fixtures/parity/README.md).
# --------------------------------------------------------------------------------------------------------------------

FRONTEND_SUBSTRINGS = ("stft", "istft", "spectrogram_extractor", "logmel_extractor", "melW")


def rule_category(key: str, shape: Sequence[int]) -> str:
  """The weight-rule branch for a PyTorch state_dict entry (first match wins).

  Returns one of ``keep_num_batches_tracked``, ``keep_frontend``, ``running_var``, ``running_mean``,
  ``norm_weight``, ``bias``, ``fan_in``, ``small_0.02`` (the fixture manifests' ``rule_category`` column).
  """
  if key.endswith("num_batches_tracked"):
    return "keep_num_batches_tracked"
  if any(s in key for s in FRONTEND_SUBSTRINGS):
    return "keep_frontend"
  if key.endswith("running_var"):
    return "running_var"
  if key.endswith("running_mean"):
    return "running_mean"
  if len(shape) == 1 and key.endswith("weight"):
    return "norm_weight"
  if key.endswith("bias"):
    return "bias"
  if len(shape) >= 2:
    return "fan_in"
  return "small_0.02"


def rule_value(key: str, shape: Sequence[int]) -> np.ndarray:
  """The weight rule's value for a random-branch entry, float32, in the PyTorch shape.

  ``x = default_rng(crc32(key)).standard_normal(shape)`` (float64), then ``1 + 0.1|x|`` (running_var),
  ``0.1x`` (running_mean), ``1 + 0.1x`` (1-d ``*weight``), ``0.1x`` (``*bias``), ``x / sqrt(prod(shape[1:]))``
  (>= 2 dims), else ``0.02x``; cast to float32.

  Raises:
    ValueError: for the ``keep_*`` categories, which have no rule value.
  """
  shape = tuple(int(d) for d in shape)
  category = rule_category(key, shape)
  if category.startswith("keep_"):
    raise ValueError(f"{key}: category {category} keeps the constructed value; the rule draws nothing")
  x = np.random.default_rng(zlib.crc32(key.encode("utf-8"))).standard_normal(shape)
  if category == "running_var":
    value = 1.0 + 0.1 * np.abs(x)
  elif category == "running_mean" or category == "bias":
    value = 0.1 * x
  elif category == "norm_weight":
    value = 1.0 + 0.1 * x
  elif category == "fan_in":
    value = x / np.sqrt(float(np.prod(shape[1:])))
  else:
    value = 0.02 * x
  return value.astype(np.float32)


def load_manifest(path: PathLike) -> list[tuple[str, tuple[int, ...], str, str]]:
  """Reads a fixture ``manifest.json``: ``[(key, pytorch_shape, dtype, rule_category), ...]`` in state_dict order."""
  with open(path, encoding="utf-8") as f:
    rows = json.load(f)
  return [(k, tuple(int(d) for d in s), dt, c) for k, s, dt, c in rows]


def rule_state_dict(manifest: PathLike | Sequence[Sequence[Any]], *,
                    frontend_constants: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
  """Rebuilds a parity fixture's state_dict (PyTorch layout) with the weight rule, numpy only.

  Args:
    manifest: a ``manifest.json`` path, or rows ``(key, shape)`` / ``(key, shape, dtype, category)``.
    frontend_constants: values for ``keep_frontend`` keys (e.g. ``frontend_constants.npz``); keys not given get a
      zero placeholder of the manifest shape (converters ignore front-end kernels).

  Returns:
    ``{key: array}`` in manifest order: rule values (float32), ``num_batches_tracked`` as int64 0, front-end entries
    as above.

  Raises:
    ValueError: a row whose stated category differs from the rule's branch (a manifest / rule mismatch).
  """
  rows = load_manifest(manifest) if isinstance(manifest, (str, os.PathLike)) else manifest
  constants = frontend_constants or {}
  out = {}
  for row in rows:
    key, shape = row[0], tuple(int(d) for d in row[1])
    dtype = row[2] if len(row) > 2 else "float32"
    category = rule_category(key, shape)
    if len(row) > 3 and row[3] != category:
      raise ValueError(f"{key} {shape}: manifest says {row[3]}, the rule gives {category}")
    if category == "keep_num_batches_tracked":
      out[key] = np.zeros(shape, np.int64)
    elif category == "keep_frontend":
      out[key] = np.asarray(constants[key]) if key in constants else np.zeros(shape, np.dtype(dtype))
    else:
      out[key] = rule_value(key, shape)
  return out


# ---- key-map entries: (flax path, PyTorch -> Flax transform, Flax shape -> PyTorch shape) ----

KeyMapEntry = tuple[tuple[Any, ...], Callable[[np.ndarray], np.ndarray], Callable[[tuple[int, ...]], tuple[int, ...]]]


def identity(w: np.ndarray) -> np.ndarray:
  """Transform of a tensor stored the same way in both frameworks."""
  return np.asarray(w)


def same_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  """Flax shape -> PyTorch shape of an ``identity`` entry."""
  return tuple(shape)


def transposed_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  """Flax ``(in, out)`` -> PyTorch ``nn.Linear`` ``(out, in)``."""
  return (shape[1], shape[0])


def conv2d_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  """Flax ``(kh, kw, in, out)`` -> PyTorch ``nn.Conv2d`` ``(out, in, kh, kw)``."""
  return (shape[3], shape[2], shape[0], shape[1])


def qkv_kernel(heads: int) -> Callable[[np.ndarray], np.ndarray]:
  """Transform of a fused ``qkv`` ``nn.Linear.weight`` ``(3 D, D)`` (rows ordered (3, heads, head_dim), timm / Swin)
  into the head-axis kernel ``(D, 3, heads, head_dim)`` of ``uss_jax.nn.attention.FusedQKV``: ``weight.T`` reshaped."""

  def transform(w: np.ndarray) -> np.ndarray:
    _check_ndim(w, 2, "qkv Linear weight")
    if w.shape[0] % (3 * heads):
      raise ValueError(f"qkv weight of shape {w.shape} does not split into 3 x {heads} heads")
    return np.ascontiguousarray(w.T).reshape(w.shape[1], 3, heads, w.shape[0] // (3 * heads))

  return transform


def qkv_kernel_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  """Flax ``(D, 3, heads, head_dim)`` -> PyTorch ``(3 * heads * head_dim, D)`` of a ``qkv_kernel`` entry."""
  return (shape[1] * shape[2] * shape[3], shape[0])


def qkv_entries(torch_name: str, path: tuple[Any, ...], heads: int) -> dict[str, KeyMapEntry]:
  """The key-map entries of a fused qkv projection: ``.weight`` -> ``path/kernel`` (``qkv_kernel``), ``.bias`` ->
  ``path/bias`` (flat ``(3 D,)`` in both frameworks)."""
  return {f"{torch_name}.weight": (path + ("kernel",), qkv_kernel(heads), qkv_kernel_shape),
          f"{torch_name}.bias": (path + ("bias",), identity, same_shape)}
