"""Start-up hook of test subprocesses: serve ``testbucket://`` from ``$USS_JAX_TEST_BUCKET`` (tests/fake_bucket.py)."""
import os

if os.environ.get("USS_JAX_TEST_BUCKET"):
  import fake_bucket  # tests/ is on PYTHONPATH next to this folder (fake_bucket.env)

  fake_bucket.register(os.environ["USS_JAX_TEST_BUCKET"])
