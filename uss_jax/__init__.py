"""uss_jax: JAX/Flax NNX framework for audio pretraining and query-based sound separation.

Parameters carry logical axis names (``nnx.with_partitioning``); the trainer maps them onto the mesh with the rules
table of the config (``uss_jax.train.sharding``). Flax's eager sharding is therefore switched off here: a variable is
placed only when the trainer creates the state under ``jax.jit(..., out_shardings=...)``.
"""

from flax import nnx as _nnx

_nnx.use_eager_sharding(False)

__version__ = "0.1.0"
