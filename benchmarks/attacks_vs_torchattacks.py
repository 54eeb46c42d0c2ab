"""Clean inference, PGD-20, AutoAttack stages and the whole AutoAttack (standard): this
project vs torchattacks, same model, same examples, one run.

The model is a RobustBench architecture built in PyTorch with random weights and BatchNorm
statistics, converted with this project's port (logits checked equal before timing). Prints
examples/s for each side and the ratio (ours / torchattacks; > 1 means we are faster).
`autoattack` runs the four standard stages in sequence, each on the points the earlier ones
left, on both sides (torchattacks' stages built with AutoAttack's settings: 100 iterations,
9 target classes, 5000 Square queries; its own AutoAttack class defaults to 10 iterations).

  python benchmarks/attacks_vs_torchattacks.py --arch=resnet18 --batch=64 --attacks=clean,pgd20
  python benchmarks/attacks_vs_torchattacks.py --arch=wrn16_2 --attacks=apgd-ce,autoattack
  python benchmarks/attacks_vs_torchattacks.py --norm=l2 --attacks=pgd20,autoattack
  python benchmarks/attacks_vs_torchattacks.py --device=gpu --batch=512  # both on the GPU
  python benchmarks/attacks_vs_torchattacks.py --arch=autoattack_resnet18 --batch=16 \
      --inputs=confident --attacks=autoattack --original --repeats=1  # every stage works
  python benchmarks/attacks_vs_torchattacks.py --arch=autoattack_resnet18 --batch=8 \
      --inputs=confident --norm=l1 --attacks=autoattack --repeats=1  # vs the original's L1
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchattacks  # noqa: E402

from mixacm_jax.attacks import autoattack, pgd  # noqa: E402
from mixacm_jax.evaluation import defaults, robustness  # noqa: E402
from mixacm_jax.port import convert  # noqa: E402

import common  # noqa: E402  sets up sys.path  # pylint: disable=g-bad-import-order
from tools import robustbench_zoo as robustbench  # noqa: E402  # pylint: disable=g-bad-import-order

# L1: the original L1 AutoAttack's CIFAR-10 radius (Croce & Hein, ICCV 2021).
EPS = {"linf": 8 / 255, "l2": 0.5, "l1": 12.0}
STANDARD = autoattack.get_version("standard")

ARCHS = {
    "resnet18": (lambda: robustbench.architecture_module("resnet").ResNet18(), "resnet18", {}),
    "wrn16_2": (lambda: robustbench.architecture_module("wide_resnet").WideResNet(
        depth=16, widen_factor=2), "wrn", {"depth": 16, "widen_factor": 2}),
    "preact18": (lambda: robustbench.architecture_module("resnet").PreActResNet18(),
                 "preact_resnet18", {"final_bn": False, "shortcut_from_preact": False}),
}


def authors_resnet18():
  """The original AutoAttack authors' robust CIFAR-10 ResNet-18, shipped in `pyautoattack`
  (examples/model_test.pt, 45 MB: loaded from the installed package, never copied here)."""
  import importlib.util  # pylint: disable=g-import-not-at-top

  import pyautoattack  # pylint: disable=g-import-not-at-top
  examples = os.path.join(os.path.dirname(pyautoattack.__file__), "examples")
  spec = importlib.util.spec_from_file_location("aa_resnet", os.path.join(examples, "resnet.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  path = os.path.join(examples, "model_test.pt")
  net = module.ResNet18()
  net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
  model, variables, _ = convert.load_pytorch_weights(path, "resnet18")
  return net.eval(), model, variables


def build(arch, path):
  if arch == "autoattack_resnet18":
    return authors_resnet18()
  factory, name, kwargs = ARCHS[arch]
  torch.manual_seed(0)  # the weights too, not only the BatchNorm statistics: same run each time
  net = robustbench.randomise_batchnorm(factory(), 0)
  torch.save(net.state_dict(), path)
  model, variables, _ = convert.load_pytorch_weights(path, name, **kwargs)
  return net, model, variables


def confident_inputs(model, variables, n, seed=0, max_steps=60):
  """Fixed inputs on which a robust model is partly robust, so that every AutoAttack stage
  has work (uniform noise is broken by APGD-CE alone). Seeded uniform noise, then for
  example i, k_i signed-gradient steps of 2/255 *down* the cross-entropy of class i mod 10
  (k_i spread evenly over 0..max_steps): from no margin at all to a large one."""
  x = np.random.RandomState(seed).rand(n, 32, 32, 3).astype(np.float32)
  target = jnp.arange(n) % 10
  grad = jax.jit(jax.grad(lambda v: jnp.sum(pgd.ce_loss(model.apply(variables, v), target))))
  steps = jnp.asarray(np.linspace(0, max_steps, n).astype(int))
  for k in range(max_steps):
    moved = jnp.clip(x - 2 / 255 * jnp.sign(grad(x)), 0.0, 1.0)
    x = jnp.where((k < steps)[:, None, None, None], moved, x)
  return np.asarray(x)


def original_sequence(net, x_t, y_t, eps, norm):
  """The original AutoAttack code's standard version (`pyautoattack`), robust accuracy."""
  import pyautoattack  # pylint: disable=g-import-not-at-top
  adversary = pyautoattack.AutoAttack(net, norm={"linf": "Linf", "l2": "L2", "l1": "L1"}[norm],
                                      eps=eps,
                                      version="standard", seed=0, device=x_t.device)
  adversary.verbose = False
  x_adv, _ = adversary.run_standard_evaluation(x_t, y_t, batch_size=len(y_t))
  with torch.no_grad():
    return float((net(x_adv).argmax(1) == y_t).float().mean())


def ours_attack(name, logits_fn, eps, norm):
  """attack(x, y, key) -> (x_adv, fooled)."""
  if name.startswith("pgd"):
    return lambda x, y, k: pgd.pgd(logits_fn, x, y, k, eps=eps, step_size=eps / 4,
                                   steps=int(name[3:]), norm=norm)
  stage = autoattack.get_stage(name)
  return lambda x, y, k: stage(logits_fn, x, y, k, eps=eps, norm=norm)


def ours_autoattack(model, variables, x, y, eps, norm, programs):
  """Robust accuracy under the standard AutoAttack, by the report's engine (all points in
  one batch); `programs` keeps the compiled stages between calls."""
  cfg = defaults.eval_config(attacks="autoattack", eps=eps, norm=norm, batch_size=len(y))
  report = robustness.report_on_arrays(model, variables, x, y, cfg, key=jax.random.PRNGKey(0),
                                       verbose=False, programs=programs)
  return report["attacks"]["autoattack"]["robust_accuracy"]


def their_attack(name, net, eps, norm):
  n = {"linf": "Linf", "l2": "L2"}[norm]
  if name.startswith("pgd"):
    cls = torchattacks.PGD if norm == "linf" else torchattacks.PGDL2
    return cls(net, eps=eps, alpha=eps / 4, steps=int(name[3:]), random_start=True)
  return {"apgd-ce": lambda: torchattacks.APGD(net, norm=n, eps=eps, steps=100, loss="ce"),
          "apgd-t": lambda: torchattacks.APGDT(net, norm=n, eps=eps, steps=100, n_classes=10),
          "fab-t": lambda: torchattacks.FAB(net, norm=n, eps=eps, steps=100, n_classes=10,
                                            multi_targeted=True),
          "square": lambda: torchattacks.Square(net, norm=n, eps=eps, n_queries=5000,
                                                resc_schedule=False)}[name]()


def their_sequence(attacks, net, x_t, y_t):
  robust = np.ones(len(y_t), bool)
  for attack in attacks:
    idx = torch.from_numpy(np.flatnonzero(robust)).to(x_t.device)
    if len(idx):
      adv = attack(x_t[idx], y_t[idx])
      with torch.no_grad():
        robust[idx.cpu().numpy()] = (net(adv).argmax(1) == y_t[idx]).cpu().numpy()
  return robust.mean()


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--arch", default="resnet18", choices=sorted(ARCHS) + ["autoattack_resnet18"],
                 help="autoattack_resnet18: the AutoAttack authors' robust model (pyautoattack)")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--attacks", default="pgd20")
  p.add_argument("--norm", default="linf", choices=sorted(EPS))
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--inputs", default="noise", choices=["noise", "confident"],
                 help="confident: inputs a robust model is partly robust on (see "
                      "confident_inputs), so every AutoAttack stage works")
  p.add_argument("--original", action="store_true",
                 help="also time the original AutoAttack code (pyautoattack) on `autoattack`")
  p.add_argument("--threads", type=int, default=os.cpu_count())
  common.add_device_flags(p)
  args = p.parse_args()
  if args.norm == "l1" and set(args.attacks.split(",")) - {"clean", "autoattack"}:
    raise SystemExit("--norm=l1: torchattacks has no L1 attacks; time --attacks=autoattack "
                     "(against the original code) or clean")
  common.setup_device(args)
  torch.set_num_threads(args.threads)
  dev = torch.device("cuda" if args.device == "gpu" else "cpu")
  sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
  eps = EPS[args.norm]
  net, model, variables = build(args.arch, "/tmp/_bench_weights.pt")
  net = net.to(dev)
  x = (confident_inputs(model, variables, args.batch) if args.inputs == "confident" else
       np.random.RandomState(0).rand(args.batch, 32, 32, 3).astype(np.float32))
  logits_fn = lambda v: model.apply(variables, v)
  # Labels = the model's predictions, so every example starts correctly classified and both
  # sides attack all of them (torchattacks' APGD/FAB/Square skip misclassified inputs).
  y = np.asarray(jnp.argmax(logits_fn(x), -1))
  x_t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(dev)
  y_t = torch.from_numpy(y.astype(np.int64)).to(dev)
  with torch.no_grad(), common.exact_float32(torch):
    diff = np.max(np.abs(np.asarray(logits_fn(x)) - net(x_t).cpu().numpy()))
  assert diff < 1e-3, f"the two models differ (max |dlogit| = {diff})"
  print(f"{common.describe_machine()}; torch {torch.__version__} on {dev.type} ({args.threads} "
        f"threads); {args.arch}, batch {args.batch} ({args.inputs} inputs), {args.norm} eps "
        f"{eps:.4g}, "
        f"max |dlogit| {diff:.1e}")
  xj, yj, key = jnp.asarray(x), jnp.asarray(y), jax.random.PRNGKey(0)
  compiled, keys = jax.jit, key
  if jax.device_count() > 1 and args.device == "cpu":
    # --host_devices: the batch split over host devices and the one-program attacks (clean,
    # PGD) pmapped over them, as the library's report runs them. AutoAttack's Python-driven
    # loops stay on one.
    if any(not (a == "clean" or a.startswith("pgd")) for a in args.attacks.split(",")):
      raise SystemExit("--host_devices > 1 times only clean and pgd<k>")
    n = jax.device_count()
    if args.batch % n:
      raise SystemExit(f"--batch={args.batch} does not split over {n} devices")
    xj, yj = (a.reshape((n, -1) + a.shape[1:]) for a in (xj, yj))
    compiled, keys = jax.pmap, jax.random.split(key, n)
  programs = {}  # our compiled AutoAttack stages, shared by the timed repeats
  for name in args.attacks.split(","):
    acc, peer = {}, "torchattacks"
    if name == "clean":
      fwd = compiled(logits_fn)
      ours_fn = lambda: jax.block_until_ready(fwd(xj))

      def theirs_fn():
        with torch.no_grad():
          net(x_t)
        sync()
    elif name == "autoattack":
      # The library's own engine, as the command runs it: the timed repeats reuse the
      # stages the first call compiled (one `programs` cache), so compilation is in the
      # first call only.
      ours_fn = lambda: acc.__setitem__("ours", ours_autoattack(model, variables, x, y, eps,
                                                                args.norm, programs))
      if args.norm == "l1":  # torchattacks has no L1 attacks: the original code is the peer
        peer = "original"
        theirs_fn = lambda: acc.__setitem__("theirs", original_sequence(
            net, x_t, y_t, eps, args.norm))
      else:
        attacks = [their_attack(s, net, eps, args.norm) for s in STANDARD]
        theirs_fn = lambda: acc.__setitem__("theirs", their_sequence(attacks, net, x_t, y_t))
    else:
      # PGD is one jitted program; AutoAttack's stages drive their own loops (attacks.loop).
      fn = ours_attack(name, logits_fn, eps, args.norm)
      fn = compiled(fn) if name.startswith("pgd") else fn
      ours_fn = lambda: jax.block_until_ready(fn(xj, yj, keys))
      attack = their_attack(name, net, eps, args.norm)
      theirs_fn = lambda: (attack(x_t, y_t), sync())
    t0 = time.perf_counter()
    ours_fn()
    compile_s = time.perf_counter() - t0
    ours = common.timed(ours_fn, args.repeats)
    theirs = common.timed(theirs_fn, args.repeats)
    note = f" robust acc {acc['ours']:.3f} vs {acc['theirs']:.3f};" if acc else ""
    if name == "autoattack" and args.original and peer != "original":
      original = common.timed(lambda: acc.__setitem__(
          "original", original_sequence(net, x_t, y_t, eps, args.norm)), args.repeats)
      note += (f" original AutoAttack {args.batch / original[0]:.1f} ex/s (median "
               f"{original[0]:.3f} s), robust acc {acc['original']:.3f}, ratio "
               f"{original[0] / ours[0]:.2f}x;")
    print(f"{name:10s} ours {args.batch / ours[0]:9.1f} ex/s (median {ours[0]:.3f} s, "
          f"{ours[1]:.3f}-{ours[2]:.3f}; first call incl. compile {compile_s:.1f} s) | "
          f"{peer} {args.batch / theirs[0]:9.1f} ex/s (median {theirs[0]:.3f} s) |{note} "
          f"ratio {theirs[0] / ours[0]:.2f}x", flush=True)


if __name__ == "__main__":
  main()
