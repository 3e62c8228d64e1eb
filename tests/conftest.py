"""Test set-up: 8 fake CPU devices, absl flags parsed (grain reads them), the real-audio corpus fixture."""

import os
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"

# One persistent XLA compilation cache for the whole suite, set before jax is imported (jax reads these variables
# then): both xdist workers build the same session fixtures, and the `uss-jax` subprocesses (they inherit the
# environment) compile the programs their parent test already compiled. Compilation dominates these tiny-config tests
# on CPU; the cache key is the program, so a hit is the same executable. A user's own JAX_COMPILATION_CACHE_DIR is kept.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO / ".pytest_cache" / "jax_compilation_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import jax  # noqa: E402

# Sharding tests need 8 devices; single-device code still runs on device 0.
jax.config.update("jax_num_cpu_devices", 8)

from absl import flags  # noqa: E402
import pytest  # noqa: E402

flags.FLAGS.mark_as_parsed()


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


@pytest.fixture(scope="session")
def demo_tfds(tmp_path_factory) -> str:
  """The embedded demo corpus built once (16 kHz) into a session temp dir; tests share it via config.data.tfds_dir."""
  from data_pipelines.builders import labeled_audio  # pylint: disable=import-outside-toplevel
  from configs import common  # pylint: disable=import-outside-toplevel

  path = tmp_path_factory.mktemp("demo_tfds")
  labeled_audio.build_labeled_audio(audio_dir=common.DEMO_AUDIO_DIR, csv_path=common.DEMO_CSV, data_dir=str(path),
                                    sample_rate=16000, holdout_fraction=0.25)
  return str(path)


@pytest.fixture(scope="session")
def tagger_workdir(demo_tfds, tmp_path_factory) -> str:
  """configs/sed_cnn14.py:tiny trained 2 steps on the demo corpus: the query net of the separation runs."""
  from spine_utils import tiny_config  # pylint: disable=import-outside-toplevel
  from uss_jax.train import trainer  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path_factory.mktemp("tagger"))
  trainer.train_and_evaluate(tiny_config(demo_tfds, total_steps=2, checkpoint_every=2, eval_every=0), workdir)
  return workdir


@pytest.fixture(scope="session")
def separation_run(demo_tfds, tagger_workdir, tmp_path_factory):
  """``(config, workdir, result)`` of a 2-step separation run evaluated at step 2. Reference initialisation: with
  output_init='identity' (the small recipes) after_conv starts at zero, so in 2 warm-up steps only after_conv would
  receive gradients, and tests/test_separation_task.py checks that every kernel trains."""
  from spine_utils import separation_config  # pylint: disable=import-outside-toplevel
  from uss_jax.train import trainer  # pylint: disable=import-outside-toplevel
  config = separation_config(demo_tfds, tagger_workdir, total_steps=2, eval_every=2)
  config.model.output_init = "reference"
  workdir = str(tmp_path_factory.mktemp("separation"))
  return config, workdir, trainer.train_and_evaluate(config, workdir)
