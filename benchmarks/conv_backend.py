"""Per layer and pass: XLA:CPU's convolution in YNNPACK (jaxlib's default) and in XLA's own
Eigen kernel (this project's default, `mixacm_jax.runtime.xla_cpu`), and PyTorch's, in one
process, runs interleaved.

  python benchmarks/conv_backend.py --batch=64 --repeats=3

Each pass (forward, weight gradient, input gradient) of each ResNet-18 layer shape (NHWC,
float32) is compiled twice, once per backend, through per-program compiler options, so the
process's own `XLA_FLAGS` does not matter; the two results must agree. PyTorch runs the same
passes on channels_last tensors. Prints milliseconds (the best of `repeats` rounds, each round
timing every candidate once) and the ratios.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jax  # noqa: E402
from jax import lax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import common  # noqa: E402  sets up sys.path  # pylint: disable=g-bad-import-order

# (side, in channels, out channels, kernel, stride): the 3x3 layers of each stage, the strided
# 3x3 and 1x1 shortcut convolutions that enter stages 2-4, and the stem.
LAYERS = [(32, 3, 64, 3, 1), (32, 64, 64, 3, 1), (32, 64, 128, 3, 2), (32, 64, 128, 1, 2),
          (16, 128, 128, 3, 1), (16, 128, 256, 3, 2), (8, 256, 256, 3, 1),
          (8, 256, 512, 3, 2), (4, 512, 512, 3, 1)]
_FUSIONS = ("LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT", "LIBRARY_FUSION_TYPE_REDUCE")
BACKENDS = {  # jaxlib 0.10.2's default list, and the same without convolutions
    "ynnpack": ",".join(_FUSIONS + ("LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",)),
    "eigen": ",".join(_FUSIONS),
}
PASSES = ("forward", "weight grad", "input grad")


def _jax_passes(k, s):
  pad = ((k // 2, k // 2),) * 2
  conv = lambda x, w: lax.conv_general_dilated(x, w, (s, s), pad,
                                               dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return {"forward": lambda x, w, g: conv(x, w),
          "weight grad": lambda x, w, g: jax.vjp(lambda v: conv(x, v), w)[1](g)[0],
          "input grad": lambda x, w, g: jax.vjp(lambda v: conv(v, w), x)[1](g)[0]}


def _torch_passes(k, s):
  f = torch.nn.functional.conv2d
  grad = torch.nn.grad
  return {"forward": lambda x, w, g: f(x, w, stride=s, padding=k // 2),
          "weight grad": lambda x, w, g: grad.conv2d_weight(x, w.shape, g, stride=s,
                                                            padding=k // 2),
          "input grad": lambda x, w, g: grad.conv2d_input(x.shape, w, g, stride=s,
                                                          padding=k // 2)}


def _compiled(fn, args, backend):
  opts = {"xla_cpu_experimental_ynn_fusion_type": BACKENDS[backend]}
  return jax.jit(fn).lower(*args).compile(compiler_options=opts)


def _layer(batch, side, c, d, k, s, repeats):
  """{pass: {candidate: ms}} for one layer."""
  rng = np.random.RandomState(0)
  out = side // s
  x, w, g = (rng.rand(*shape).astype(np.float32) for shape in
             ((batch, side, side, c), (k, k, c, d), (batch, out, out, d)))
  jx, jw, jg = (jnp.asarray(a) for a in (x, w, g))
  tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
  tw = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
  tg = torch.from_numpy(g).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
  table = {}
  for pass_, fn in _jax_passes(k, s).items():
    compiled = {b: _compiled(fn, (jx, jw, jg), b) for b in BACKENDS}
    results = {b: np.asarray(c_(jx, jw, jg)) for b, c_ in compiled.items()}
    scale = float(np.max(np.abs(results["ynnpack"])))
    err = float(np.max(np.abs(results["ynnpack"] - results["eigen"]))) / scale
    assert err < 1e-4, f"{pass_}: the two backends differ by {err:.1e} of the largest entry"
    calls = {b: (lambda c_=c_: jax.block_until_ready(c_(jx, jw, jg)))
             for b, c_ in compiled.items()}
    tfn = _torch_passes(k, s)[pass_]
    calls["pytorch"] = lambda tfn=tfn: tfn(tx, tw, tg)
    with torch.no_grad():
      best = {name: float("inf") for name in calls}
      for _ in range(repeats):  # interleaved: a busy moment hits every candidate alike
        for name, call in calls.items():
          best[name] = min(best[name], 1000 * common.timed(call, 1)[1])
    table[pass_] = best
  return table


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--threads", type=int, default=os.cpu_count())
  args = p.parse_args()
  jax.config.update("jax_platforms", "cpu")
  torch.set_num_threads(args.threads)
  print(f"{common.describe_machine()}; torch {torch.__version__} ({args.threads} threads, "
        f"channels_last); batch {args.batch}; ms, best of {args.repeats} interleaved rounds")
  print("| layer | pass | YNNPACK | Eigen | PyTorch | YNNPACK / Eigen | PyTorch / Eigen |")
  print("|---|---|---|---|---|---|---|")
  totals = dict.fromkeys(("ynnpack", "eigen", "pytorch"), 0.0)
  for side, c, d, k, s in LAYERS:
    table = _layer(args.batch, side, c, d, k, s, args.repeats)
    for pass_ in PASSES:
      t = table[pass_]
      for name in totals:
        totals[name] += t[name]
      print(f"| {side}x{side}, {c}->{d}, {k}x{k}/{s} | {pass_} | {t['ynnpack']:.1f} | "
            f"{t['eigen']:.1f} | {t['pytorch']:.1f} | {t['ynnpack'] / t['eigen']:.2f}x | "
            f"{t['pytorch'] / t['eigen']:.2f}x |", flush=True)
  print(f"| all layers | all passes | {totals['ynnpack']:.1f} | {totals['eigen']:.1f} | "
        f"{totals['pytorch']:.1f} | {totals['ynnpack'] / totals['eigen']:.2f}x | "
        f"{totals['pytorch'] / totals['eigen']:.2f}x |")


if __name__ == "__main__":
  main()
