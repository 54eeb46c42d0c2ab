"""PGD-20 and AutoAttack stages: this project vs torchattacks, same model, same examples, one run.

The model is a RobustBench architecture built in PyTorch with random weights and BatchNorm
statistics, converted with this project's port (logits checked equal before timing). Prints
examples/s for each side and the ratio (ours / torchattacks; > 1 means we are faster).

  python benchmarks/attacks_vs_torchattacks.py --arch=resnet18 --batch=64 --attacks=pgd20
  python benchmarks/attacks_vs_torchattacks.py --arch=wrn16_2 --batch=64 --attacks=pgd20,apgd-ce,apgd-t
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchattacks  # noqa: E402

from mixacm_jax.attacks import apgd, fab, pgd, square  # noqa: E402
from mixacm_jax.port import convert, robustbench  # noqa: E402

EPS = 8 / 255


ARCHS = {
    "resnet18": (lambda: robustbench.architecture_module("resnet").ResNet18(), "resnet18", {}),
    "wrn16_2": (lambda: robustbench.architecture_module("wide_resnet").WideResNet(depth=16, widen_factor=2),
                "wrn", {"depth": 16, "widen_factor": 2}),
    "preact18": (lambda: robustbench.architecture_module("resnet").PreActResNet18(), "preact_resnet18",
                 {"final_bn": False, "shortcut_from_preact": False}),
}


def build(arch, path):
  factory, name, kwargs = ARCHS[arch]
  net = robustbench.randomise_batchnorm(factory(), 0)
  torch.save(net.state_dict(), path)
  model, variables, _ = convert.load_pytorch_weights(path, name, **kwargs)
  return net, model, variables


def ours_attack(name, logits_fn):
  if name.startswith("pgd"):
    steps = int(name[3:])
    return lambda x, y, k: pgd.pgd(logits_fn, x, y, k, eps=EPS, step_size=EPS / 4, steps=steps)
  return {"apgd-ce": lambda x, y, k: apgd.apgd(logits_fn, x, y, k, eps=EPS, n_iter=100)[0],
          "apgd-t": lambda x, y, k: apgd.apgd_targeted(logits_fn, x, y, k, eps=EPS,
                                                       n_iter=100)[0],
          "fab-t": lambda x, y, k: fab.fab_targeted(logits_fn, x, y, k, eps=EPS,
                                                    n_iter=100)[0],
          "square": lambda x, y, k: square.square(logits_fn, x, y, k, eps=EPS,
                                                  n_queries=5000)[0]}[name]


def their_attack(name, net):
  if name.startswith("pgd"):
    return torchattacks.PGD(net, eps=EPS, alpha=EPS / 4, steps=int(name[3:]), random_start=True)
  return {"apgd-ce": lambda: torchattacks.APGD(net, eps=EPS, steps=100, loss="ce"),
          "apgd-t": lambda: torchattacks.APGDT(net, eps=EPS, steps=100, n_classes=10),
          "fab-t": lambda: torchattacks.FAB(net, eps=EPS, steps=100, n_classes=10,
                                            multi_targeted=True),
          "square": lambda: torchattacks.Square(net, eps=EPS, n_queries=5000)}[name]()


def timed(fn, repeats):
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), min(times), max(times)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--arch", default="resnet18", choices=sorted(ARCHS))
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--attacks", default="pgd20")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--threads", type=int, default=os.cpu_count())
  args = p.parse_args()
  torch.set_num_threads(args.threads)
  net, model, variables = build(args.arch, "/tmp/_bench_weights.pt")
  rng = np.random.RandomState(0)
  x = rng.rand(args.batch, 32, 32, 3).astype(np.float32)
  logits_fn = lambda v: model.apply(variables, v)
  # Labels = the model's predictions, so every example starts correctly classified and both
  # sides attack all of them (torchattacks' APGD/FAB/Square skip misclassified inputs).
  y = np.asarray(jnp.argmax(logits_fn(x), -1))
  x_t, y_t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y.astype(np.int64))
  with torch.no_grad():
    diff = np.max(np.abs(np.asarray(logits_fn(x)) - net(x_t).numpy()))
  assert diff < 1e-3, f"the two models differ (max |dlogit| = {diff})"
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
        f"({args.threads} threads); {args.arch}, batch {args.batch}, max |dlogit| {diff:.1e}")
  for name in args.attacks.split(","):
    fn = jax.jit(ours_attack(name, logits_fn))
    xj, yj, key = jnp.asarray(x), jnp.asarray(y), jax.random.PRNGKey(0)
    t0 = time.perf_counter()
    jax.block_until_ready(fn(xj, yj, key))
    compile_s = time.perf_counter() - t0
    ours = timed(lambda: jax.block_until_ready(fn(xj, yj, key)), args.repeats)
    attack = their_attack(name, net)
    theirs = timed(lambda: attack(x_t, y_t), args.repeats)
    print(f"{name:8s} ours {args.batch / ours[0]:8.1f} ex/s (median {ours[0]:.2f} s, "
          f"{ours[1]:.2f}-{ours[2]:.2f}; first call incl. compile {compile_s:.1f} s) | "
          f"torchattacks {args.batch / theirs[0]:8.1f} ex/s (median {theirs[0]:.2f} s) | "
          f"ratio {theirs[0] / ours[0]:.2f}x")


if __name__ == "__main__":
  main()
