"""Multi-host start-up: `jax.distributed.initialize` when flags or the cluster ask for it."""
import os
from typing import Optional

import jax

from mixacm_jax.errors import ConfigError

# Environments whose launchers JAX's auto-detection understands (TPU pods, SLURM, Open MPI).
CLUSTER_ENV = ("TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE")


def maybe_initialize(coordinator_address: Optional[str] = None, num_processes: int = 0,
                     process_id: int = -1, auto: bool = False) -> bool:
  """Initialises jax.distributed from explicit flags, or from the cluster's environment when
  `auto`; does nothing for a single process. Returns whether it initialised."""
  if coordinator_address:
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ConfigError(f"with --coordinator_address set, give --num_processes >= 1 and "
                        f"0 <= --process_id < num_processes (got {num_processes}, {process_id})")
    # Cross-process collectives for CPU devices (tests, CPU clusters); GPUs/TPUs use their own.
    # Must not touch the backend before initialize(), so it is set unconditionally.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
    return True
  if auto and any(k in os.environ for k in CLUSTER_ENV):
    jax.distributed.initialize()
    return True
  return False
