"""Per layer: every form of the convolution's forward pass and weight gradient
(`mixacm_jax.models.conv`), XLA's input gradient, and PyTorch's forward and forward + backward,
for one 3x3 stride-1 convolution per ResNet-18 stage shape (NHWC, float32).

  python benchmarks/conv_forms.py --batch=64 --repeats=3

Prints milliseconds (the best of `repeats` after a compiling call; the library's own
measurement) and the form `auto` would choose; each form is checked against XLA's result.
With `--host_devices=2` every device runs the shape at once, as a pmapped step does.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import common  # noqa: E402  sets up sys.path  # pylint: disable=g-bad-import-order
from mixacm_jax.models import conv  # noqa: E402  # pylint: disable=g-bad-import-order

SHAPES = [(32, 64), (16, 128), (8, 256), (4, 512)]  # (height = width, channels)
PAD = ((1, 1), (1, 1))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--threads", type=int, default=os.cpu_count())
  common.add_device_flags(p)
  args = p.parse_args()
  common.setup_device(args)
  torch.set_num_threads(args.threads)
  print(f"{common.describe_machine()}; torch {torch.__version__} ({args.threads} threads); "
        f"batch {args.batch} per device; ms, best of {args.repeats}")
  worst = 0.0
  for hw, c in SHAPES:
    x_shape, w_shape = (args.batch, hw, hw, c), (3, 3, c, c)
    rng = np.random.RandomState(0)
    x, w, g = (jnp.asarray(rng.rand(*s), jnp.float32) for s in (x_shape, w_shape, x_shape))
    row = []
    for pass_, second in (("forward", w), ("weight_grad", g)):
      ref = conv.pass_fn(pass_, "xla", w_shape, (1, 1), PAD)(x, second)
      for form in conv.candidates(args.batch, w_shape):
        out = jax.jit(conv.pass_fn(pass_, form, w_shape, (1, 1), PAD))(x, second)
        err = float(jnp.max(jnp.abs(out - ref)) / jnp.max(jnp.abs(ref)))
        worst = max(worst, err)
        # A weight gradient here sums batch x 32 x 32 float32 terms in another order: about
        # sqrt(65536) roundings of 6e-8 (the tests' small shapes hold 1e-5).
        assert err < 1e-4, f"{pass_} {form} differs from XLA's ({err:.1e})"
      ms = {k: 1000 * v for k, v in conv.measure(pass_, x_shape, w_shape, (1, 1), PAD,
                                                  jnp.float32, args.repeats).items()}
      row.append(f"{pass_} " + " ".join(f"{k} {v:.1f}" for k, v in ms.items()) +
                 f" -> {conv.pick(ms)}")
    dgrad = jax.jit(lambda x, w, g: jax.vjp(lambda v: conv.forward("xla", v, w, (1, 1), PAD),
                                            x)[1](g)[0])
    dgrad_s = common.timed(lambda: jax.block_until_ready(dgrad(x, w, g)), args.repeats)[0]
    row.append(f"XLA input grad {1000 * dgrad_s:.1f}")
    xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).requires_grad_()
    wt = torch.from_numpy(np.asarray(w).transpose(3, 2, 0, 1).copy()).requires_grad_()
    gt = torch.from_numpy(np.asarray(g).transpose(0, 3, 1, 2).copy())

    def torch_fwd():
      with torch.no_grad():
        torch.nn.functional.conv2d(xt, wt, padding=1)

    def torch_fwd_bwd():
      torch.nn.functional.conv2d(xt, wt, padding=1).backward(gt)
    torch_fwd(), torch_fwd_bwd()
    row.append(f"PyTorch forward {1000 * common.timed(torch_fwd, args.repeats)[0]:.1f}, "
               f"fwd+bwd {1000 * common.timed(torch_fwd_bwd, args.repeats)[0]:.1f}")
    print(f"{hw}x{hw}, {c}->{c}:\n  " + "\n  ".join(row), flush=True)
  print(f"every form equals XLA's within {worst:.1e} of the largest entry")


if __name__ == "__main__":
  main()
