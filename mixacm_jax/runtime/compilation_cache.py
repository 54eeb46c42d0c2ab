"""XLA's persistent compilation cache, on by default for the command and the experiments.

On CPU one attack or train step compiles in seconds to minutes, and a run compiles the same
programs again and again: every student of one architecture has the same evaluation programs,
and a rerun or a resumed study has all of its programs. With the cache each is compiled once
and read back after (`<cache>/xla`: `~/.cache/mixacm_jax` or `$MIXACM_JAX_CACHE`). JAX hashes
`XLA_FLAGS` into every key, so XLA:CPU's convolution backend (`xla_cpu`) is part of it. A directory set through JAX itself (`JAX_COMPILATION_CACHE_DIR` or
`jax.config`) is left as it is; `MIXACM_JAX_XLA_CACHE=0` turns the cache off.

The cache is bounded (`MAX_BYTES`, least recently used entries go first), which is also what
makes JAX lock it: unbounded, JAX writes an entry in place and reads one without a lock, so a
process (or thread) that finds an entry another is still writing reads half an executable; two
runs started together on one machine share the cache."""
import os

import jax

ENV = "MIXACM_JAX_XLA_CACHE"
MIN_COMPILE_SECONDS = 1.0  # quicker compiles are not worth a file each
MAX_BYTES = 4 << 30


def cache_dir() -> str:
  root = os.environ.get("MIXACM_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                           "mixacm_jax")
  return os.path.join(root, "xla")


def enable() -> str:
  """Turns the cache on (where nothing else set it) and returns its directory ('' if off)."""
  if os.environ.get(ENV, "1") == "0":
    return ""
  if jax.config.jax_compilation_cache_max_size == -1:  # unbounded: unlocked (see above)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
  if jax.config.jax_compilation_cache_dir:
    return jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", cache_dir())
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  return cache_dir()
