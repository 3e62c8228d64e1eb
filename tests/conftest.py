"""Test set-up: 8 fake CPU devices, absl flags parsed (grain reads them), the real-audio corpus fixture."""

import os
import pathlib

import jax

# Sharding tests need 8 devices; single-device code still runs on device 0.
jax.config.update("jax_num_cpu_devices", 8)

from absl import flags  # noqa: E402
import pytest  # noqa: E402

flags.FLAGS.mark_as_parsed()

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"


@pytest.fixture(scope="session")
def corpus_dir() -> pathlib.Path:
  """The labeled real-audio corpus named by $USS_JAX_CORPUS (skips the test when unset)."""
  path = os.environ.get("USS_JAX_CORPUS")
  if not path:
    pytest.skip("USS_JAX_CORPUS is not set")
  path = pathlib.Path(path)
  if not (path / "metadata.csv").exists():
    pytest.skip(f"USS_JAX_CORPUS={path} has no metadata.csv")
  return path
