"""One 3x3 convolution (stride 1, padding 1, NHWC, float32) per ResNet-18 stage shape: XLA's
forward, input gradient and weight gradient next to PyTorch's, and the weight gradient
written three other ways (the candidates for a custom VJP), each checked equal to XLA's.

  python benchmarks/conv_backward.py --batch=64 --repeats=5

Prints milliseconds (median of `repeats`, after one warm-up call) and the relative error of
each reformulation; a custom VJP is only worth it where one beats XLA's own weight gradient.
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

SHAPES = [(32, 64), (16, 128), (8, 256), (4, 512)]  # (height = width, channels)


def conv(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _padded_views(x):
  """The nine shifted views of x (padded by 1) that a 3x3 kernel's taps read."""
  h, w = x.shape[1:3]
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return [xp[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)]


def weight_grad_im2col(x, g):
  c, d = x.shape[-1], g.shape[-1]
  patches = jnp.concatenate(_padded_views(x), -1).reshape(-1, 9 * c)
  return (patches.T @ g.reshape(-1, d)).reshape(3, 3, c, d)


def weight_grad_shifted(x, g):
  c, d = x.shape[-1], g.shape[-1]
  gm = g.reshape(-1, d)
  return jnp.stack([v.reshape(-1, c).T @ gm for v in _padded_views(x)]).reshape(3, 3, c, d)


def weight_grad_einsum(x, g):
  c, d = x.shape[-1], g.shape[-1]
  return jnp.stack([jnp.einsum("nhwc,nhwd->cd", v, g)
                    for v in _padded_views(x)]).reshape(3, 3, c, d)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--threads", type=int, default=os.cpu_count())
  args = p.parse_args()
  torch.set_num_threads(args.threads)
  print(f"{common.describe_machine()}; torch {torch.__version__} ({args.threads} threads); "
        f"batch {args.batch}; ms, median of {args.repeats}")
  ms = lambda fn: 1000 * common.timed(lambda: (fn(), None)[1], args.repeats)[0]
  for hw, c in SHAPES:
    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.randn(args.batch, hw, hw, c).astype(np.float32))
    w = jnp.asarray(0.05 * rng.randn(3, 3, c, c).astype(np.float32))
    g = jnp.asarray(rng.randn(args.batch, hw, hw, c).astype(np.float32))
    xla = {"forward": jax.jit(conv),
           "input grad": jax.jit(lambda x, w, g: jax.vjp(lambda v: conv(v, w), x)[1](g)[0]),
           "weight grad": jax.jit(lambda x, w, g: jax.vjp(lambda k: conv(x, k), w)[1](g)[0])}
    row = {}
    for name, fn in xla.items():
      a = (x, w) if name == "forward" else (x, w, g)
      jax.block_until_ready(fn(*a))
      row[f"XLA {name}"] = ms(lambda fn=fn, a=a: jax.block_until_ready(fn(*a)))
    reference = xla["weight grad"](x, w, g)
    for name, fn in [("im2col", weight_grad_im2col), ("9 shifted matmuls", weight_grad_shifted),
                     ("9 einsums", weight_grad_einsum)]:
      fn = jax.jit(fn)
      err = float(jnp.max(jnp.abs(fn(x, g) - reference)) / jnp.max(jnp.abs(reference)))
      assert err < 1e-4, f"{name} differs from XLA's weight gradient ({err:.1e})"
      row[f"{name} (err {err:.0e})"] = ms(lambda fn=fn: jax.block_until_ready(fn(x, g)))
    xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).requires_grad_()
    wt = torch.from_numpy(np.asarray(w).transpose(3, 2, 0, 1).copy()).requires_grad_()
    gt = torch.from_numpy(np.asarray(g).transpose(0, 3, 1, 2).copy())

    def torch_fwd():
      with torch.no_grad():
        torch.nn.functional.conv2d(xt, wt, padding=1)

    def torch_fwd_bwd():
      torch.nn.functional.conv2d(xt, wt, padding=1).backward(gt)
    torch_fwd(), torch_fwd_bwd()
    row["PyTorch forward"], row["PyTorch fwd+bwd"] = ms(torch_fwd), ms(torch_fwd_bwd)
    print(f"{hw}x{hw}, {c}->{c}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()),
          flush=True)


if __name__ == "__main__":
  main()
