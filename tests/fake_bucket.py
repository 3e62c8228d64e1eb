"""A fake cloud bucket for tests: URLs ``testbucket://<rest>`` served by fsspec's local filesystem under one root.

``etils.epath`` (and so ``uss_jax.io``) opens ``testbucket://...`` through the registered path class, exactly as it
opens ``gs://...`` through its GCS backend; ``open`` / ``os`` do not know the scheme, so code that bypasses epath
either fails or writes into a local ``./testbucket:/`` folder, which the tests look for. Libraries that open files
themselves (orbax's TensorStore, TensorBoard, array_record) reach the bucket through ``uss_jax.io.native``, which maps
a URL to ``native_path()`` (the backing folder), the way a gcsfuse mount backs ``gs://``.

Two processes share the bucket when both call ``register(root)`` with the same root; subprocesses do so at start-up
through ``tests/fake_bucket_site/sitecustomize.py`` when ``USS_JAX_TEST_BUCKET=<root>`` is set and that folder is on
``PYTHONPATH`` (``env()``).
"""

from __future__ import annotations

import os
import pathlib

from etils.epath import backend as backend_lib
from etils.epath import gpath
from etils.epath import register as register_lib

SCHEME = "testbucket"
PREFIX = f"{SCHEME}://"
ENV = "USS_JAX_TEST_BUCKET"
SITE_DIR = pathlib.Path(__file__).resolve().parent / "fake_bucket_site"
_ROOT: list[str] = []


def _root() -> str:
  if not _ROOT:
    raise RuntimeError(f"{PREFIX} is not registered: call fake_bucket.register(root) first")
  return _ROOT[0]


def to_local(url: str) -> str:
  """``testbucket://a/b`` -> ``<root>/a/b``."""
  url = os.fspath(url)
  if not url.startswith(PREFIX):
    raise ValueError(f"not a {PREFIX} URL: {url}")
  return os.path.join(_root(), url[len(PREFIX):])


def to_url(local: str) -> str:
  rel = os.path.relpath(os.fspath(local), _root())
  return PREFIX + ("" if rel == "." else rel)


class _BucketBackend(backend_lib.Backend):
  """epath backend: URL -> local path under the root, then fsspec's ``file`` filesystem."""

  inner = backend_lib.fsspec_backend

  def open(self, path, mode):
    return self.inner.open(to_local(path), mode)

  def exists(self, path):
    return self.inner.exists(to_local(path))

  def isdir(self, path):
    return self.inner.isdir(to_local(path))

  def listdir(self, path):
    return self.inner.listdir(to_local(path))

  def glob(self, path):
    return [to_url(p) for p in self.inner.glob(to_local(path))]

  def walk(self, top, *, top_down=True, on_error=None):
    for root, dirs, files in self.inner.walk(to_local(top), top_down=top_down, on_error=on_error):
      yield to_url(root), dirs, files

  def makedirs(self, path, *, exist_ok=False, mode=None):
    self.inner.makedirs(to_local(path), exist_ok=exist_ok, mode=mode)

  def mkdir(self, path, *, exist_ok=False, mode=None):
    self.inner.mkdir(to_local(path), exist_ok=exist_ok, mode=mode)

  def rmtree(self, path):
    self.inner.rmtree(to_local(path))

  def remove(self, path):
    self.inner.remove(to_local(path))

  def rename(self, path, dst):
    self.inner.rename(to_local(path), to_local(dst))

  def replace(self, path, dst):
    self.inner.replace(to_local(path), to_local(dst))

  def copy(self, path, dst, overwrite):
    self.inner.copy(to_local(path), to_local(dst), overwrite=overwrite)

  def stat(self, path):
    return self.inner.stat(to_local(path))


_BACKEND = _BucketBackend()


class BucketPath(gpath.PosixGPath):
  """``epath.Path('testbucket://a/b')``: stored as ``/testbucket/a/b`` like epath's ``/gs/...``."""

  def __new__(cls, *parts):
    full = "/".join(os.fspath(p) for p in parts)
    if full.startswith(PREFIX):
      full = f"/{SCHEME}/" + full[len(PREFIX):]
    return super().__new__(cls, full)

  @property
  def _uri_scheme(self):
    if len(self.parts) >= 2 and self.parts[0] == "/" and self.parts[1] == SCHEME:
      return SCHEME
    return super()._uri_scheme

  @property
  def _backend(self):
    return _BACKEND if self._uri_scheme == SCHEME else super()._backend

  def native_path(self) -> str:
    """The local folder behind this URL (what ``uss_jax.io.native`` gives orbax / TensorBoard / tfds)."""
    return to_local(os.fspath(self)) if self._uri_scheme == SCHEME else os.fspath(self)


def register(root: str | os.PathLike) -> str:
  """Serves ``testbucket://`` from ``root`` (created); returns ``root``. Idempotent for the same root."""
  root = os.path.abspath(os.fspath(root))
  os.makedirs(root, exist_ok=True)
  if _ROOT and _ROOT[0] != root:
    raise RuntimeError(f"{PREFIX} is already served from {_ROOT[0]}")
  if not _ROOT:
    _ROOT.append(root)
    register_lib.register_path_cls(PREFIX)(BucketPath)
  return root


def env(root: str | os.PathLike, base: dict[str, str]) -> dict[str, str]:
  """``base`` with the variables that make a subprocess register the same bucket at start-up."""
  out = dict(base)
  out[ENV] = os.path.abspath(os.fspath(root))
  out["PYTHONPATH"] = os.pathsep.join([str(SITE_DIR), str(SITE_DIR.parent), out.get("PYTHONPATH", "")])
  return out
