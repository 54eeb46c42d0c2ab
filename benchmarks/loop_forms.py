"""The attack loops' forms on CPU, in one process: PGD's steps unrolled in one program or a
`fori_loop`, and APGD's iterations driven from Python (`attacks/loop.py`) or one
`while_loop` inside a jitted program.

  python benchmarks/loop_forms.py --arch=wrn16_2 --batch=64 --repeats=2

Random-weight model, noise inputs (no point is broken early, so every form runs every
iteration). Prints seconds (the best of `repeats` after a compiling call) and checks that the
forms return the same points.
"""
import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import common  # noqa: E402  sets up sys.path  # pylint: disable=g-bad-import-order
from mixacm_jax import models  # noqa: E402  # pylint: disable=g-bad-import-order
from mixacm_jax.attacks import apgd, loop, pgd  # noqa: E402  # pylint: disable=g-bad-import-order

ARCHS = {"wrn16_2": ("wrn", dict(depth=16, widen_factor=2)),
         "resnet18": ("resnet18", {})}
EPS = 8 / 255


def _timed(fn, repeats):
  jax.block_until_ready(fn())
  return common.timed(lambda: jax.block_until_ready(fn()), repeats)[1]


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--arch", default="wrn16_2", choices=sorted(ARCHS))
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--apgd_iters", type=int, default=20)
  p.add_argument("--repeats", type=int, default=2)
  args = p.parse_args()
  jax.config.update("jax_platforms", "cpu")
  name, kwargs = ARCHS[args.arch]
  model = models.create_model(name, num_classes=10, **kwargs)
  variables = models.init_variables(model, jax.random.PRNGKey(0), (32, 32, 3))
  logits_fn = jax.tree_util.Partial(lambda v, x: model.apply(v, x), variables)
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.rand(args.batch, 32, 32, 3), jnp.float32)
  y = jnp.asarray(rng.randint(0, 10, args.batch))
  key = jax.random.PRNGKey(1)
  print(f"{common.describe_machine()}; {args.arch}, batch {args.batch}; seconds, best of "
        f"{args.repeats}")

  run_pgd = lambda f, x, y: pgd.pgd(f, x, y, key, eps=EPS, step_size=2 / 255, steps=20)[0]
  unrolled = jax.jit(run_pgd)
  saved = loop.MAX_CPU_UNROLL
  loop.MAX_CPU_UNROLL = 0  # a plain fori_loop (this function only; restored below)
  rolled = jax.jit(lambda f, x, y: run_pgd(f, x, y))  # its own trace
  a = np.asarray(rolled(logits_fn, x, y))
  t_rolled = _timed(lambda: rolled(logits_fn, x, y), args.repeats)
  loop.MAX_CPU_UNROLL = saved
  b = np.asarray(unrolled(logits_fn, x, y))
  t_unrolled = _timed(lambda: unrolled(logits_fn, x, y), args.repeats)
  print(f"PGD-20: unrolled {t_unrolled:.3f} s, fori_loop {t_rolled:.3f} s "
        f"(unrolled / fori_loop speed {t_rolled / t_unrolled:.2f}x); same points: "
        f"{np.mean(a == b):.4f}")

  run_apgd = functools.partial(apgd.apgd, eps=EPS, n_iter=args.apgd_iters)
  host = lambda: run_apgd(logits_fn, x, y, key)[0]
  traced = jax.jit(lambda f, x, y: run_apgd(f, x, y, key)[0])
  a, b = np.asarray(host()), np.asarray(traced(logits_fn, x, y))
  t_host = _timed(host, args.repeats)
  t_traced = _timed(lambda: traced(logits_fn, x, y), args.repeats)
  print(f"APGD-CE, {args.apgd_iters} iterations: from Python {t_host:.3f} s, one while_loop "
        f"{t_traced:.3f} s (Python / while_loop speed {t_traced / t_host:.2f}x); same points: "
        f"{np.mean(np.abs(a - b) < 1e-5):.4f}")


if __name__ == "__main__":
  main()
