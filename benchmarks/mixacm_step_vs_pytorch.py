"""The MixACM train step here vs a PyTorch reference of the same step, in one process.

Teacher: RobustBench's WideResNet (eval mode, frozen); student: RobustBench's ResNet-18 (train
mode); both built in PyTorch with random weights and BatchNorm statistics and converted with
this project's port, so both sides hold the same weights. The PyTorch reference computes the
same terms (mixup CE, tau^2 KL to the teacher, ACM losses on the stem and every block group
with learned linear transformations) and takes an SGD-momentum step.

Before timing, both compute the loss on the same inputs with mixing off (alpha = 0, so the
random permutation does not enter) and must agree within 1e-4.

  python benchmarks/mixacm_step_vs_pytorch.py --batch=64 --steps=10 --torch_compile
  python benchmarks/mixacm_step_vs_pytorch.py --device=gpu --dtype=bfloat16 --batch=128 \
      --teacher_depth=34 --teacher_width=10 --torch_compile   # both sides on the GPU
  python benchmarks/mixacm_step_vs_pytorch.py --imagenet --batch=16 --steps=3

With --imagenet the teacher is torchvision's ResNet-50 and the student its ResNet-18, at
--image_size pixels (224) and 1,000 classes, matched stem to stem and stage to stage.

With --device=gpu both sides run on the GPU; with bfloat16 ours computes in bfloat16 and
PyTorch under `torch.autocast(dtype=torch.bfloat16)`, and the loss check allows bfloat16's
rounding.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mixacm_jax import objectives  # noqa: E402
from mixacm_jax.configs import cifar, imagenet  # noqa: E402
from mixacm_jax.port import convert  # noqa: E402
from mixacm_jax.runtime import parallel  # noqa: E402
from mixacm_jax.training import teacher as teacher_lib, train  # noqa: E402

import common  # noqa: E402  sets up sys.path  # pylint: disable=g-bad-import-order
from tools import robustbench_zoo as robustbench  # noqa: E402  # pylint: disable=g-bad-import-order
from tools import torch_reference  # noqa: E402  # pylint: disable=g-bad-import-order

# (student stage, PyTorch module whose output it is), (teacher stage, module)
STUDENT_HOOKS = {"stem": "bn1", "stage1": "layer1", "stage2": "layer2", "stage3": "layer3",
                 "stage4": "layer4"}
TEACHER_HOOKS = {"stem": "conv1", "stage1": "block1", "stage2": "block2", "stage3": "block3",
                 "stage3_act": "bn1"}  # ReLU is applied by the ACM mapping either way
# torchvision's ResNets: the stem's output is the max-pool's.
IMAGENET_HOOKS = {"stem": "maxpool", "stage1": "layer1", "stage2": "layer2", "stage3": "layer3",
                  "stage4": "layer4"}


def cifar_setting(args):
  """(config, teacher net, student net, teacher arch and fields, student arch, hooks, image
  shape): RobustBench's WideResNet teacher and ResNet-18 student at 32 px."""
  config = cifar.mixacm_config("resnet18", "wrn", cifar.WRN_TO_RESNET_STAGES)
  t_net = robustbench.architecture_module("wide_resnet").WideResNet(
      depth=args.teacher_depth, widen_factor=args.teacher_width)
  s_net = robustbench.architecture_module("resnet").ResNet18()
  return (config, t_net, s_net, ("wrn", {"depth": args.teacher_depth,
                                         "widen_factor": args.teacher_width}),
          "resnet18", (STUDENT_HOOKS, TEACHER_HOOKS), (32, 32, 3))


def imagenet_setting(args):
  """The same for torchvision's ResNet-50 teacher and ResNet-18 student."""
  tv = torch_reference.torchvision_models()
  config = imagenet.mixacm_config("imagenet_resnet18", "")
  config.model.dtype = config.teacher.model.dtype = "float32"  # --dtype decides
  return (config, tv.resnet50(), tv.resnet18(), ("imagenet_resnet50", {}),
          "imagenet_resnet18", (IMAGENET_HOOKS, IMAGENET_HOOKS),
          (args.image_size, args.image_size, 3))


def hooked(net, names):
  acts = {}
  for ours, theirs in names.items():
    net.get_submodule(theirs).register_forward_hook(
        lambda m, i, o, ours=ours: acts.__setitem__(ours, o))
  return acts


def torch_loss(student, teacher, s_acts, t_acts, kernels, x, y_a, y_b, lam, cfg):
  with torch.no_grad():
    t_logits = teacher(x)
  s_logits = student(x)
  log_p = F.log_softmax(s_logits, -1)
  ce = (lam * F.nll_loss(log_p, y_a, reduction="none")
        + (1 - lam) * F.nll_loss(log_p, y_b, reduction="none")).mean()
  tau = cfg.temperature
  kd = tau ** 2 * F.kl_div(F.log_softmax(s_logits / tau, -1), F.log_softmax(t_logits / tau, -1),
                           reduction="batchmean", log_target=True)
  acm = 0.0
  for spec in cfg.acm.stages:
    s_name, _, t_name = spec.partition(":")
    t_name = t_name or s_name
    t_vec = F.normalize(F.relu(t_acts[t_name]).mean((2, 3)), dim=1, eps=1e-12)
    key = s_name if t_name == s_name else f"{s_name}__{t_name}"  # as mixacm.stage_pairs
    s_vec = F.normalize(F.relu(s_acts[s_name]).mean((2, 3)) @ kernels[key], dim=1, eps=1e-12)
    acm = acm + ((t_vec - s_vec) ** 2).sum(1).mean()
  return cfg.w_ce * ce + cfg.w_kd * kd + cfg.w_acm * acm


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--teacher_depth", type=int, default=16)
  p.add_argument("--teacher_width", type=int, default=4)
  p.add_argument("--imagenet", action="store_true",
                 help="torchvision's ResNet-50 -> ResNet-18 at --image_size, 1,000 classes")
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--threads", type=int, default=os.cpu_count())
  p.add_argument("--torch_compile", action="store_true", help="also time torch.compile")
  p.add_argument("--breakdown", action="store_true",
                 help="also time the teacher forward and the student fwd+bwd alone")
  common.add_device_flags(p)
  args = p.parse_args()
  dtype = common.setup_device(args)
  torch.set_num_threads(args.threads)
  dev = torch.device("cuda" if args.device == "gpu" else "cpu")
  autocast = lambda: torch.autocast(dev.type, dtype=torch.bfloat16,
                                    enabled=dtype == "bfloat16")
  sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
  torch.manual_seed(0)
  config, t_net, s_net, (t_arch, t_fields), s_arch, (s_hooks, t_hooks), shape = (
      imagenet_setting if args.imagenet else cifar_setting)(args)
  cfg = config.objective  # torch_loss reads its `mixacm` group
  t_net = robustbench.randomise_batchnorm(t_net, 0)
  s_net = robustbench.randomise_batchnorm(s_net, 1).train()
  torch.save(t_net.state_dict(), "/tmp/_bench_t.pt")
  torch.save(s_net.state_dict(), "/tmp/_bench_s.pt")
  t_model, t_vars, _ = convert.load_pytorch_weights(
      "/tmp/_bench_t.pt", t_arch, image_shape=shape, dtype=dtype, **t_fields)
  s_model, s_vars, _ = convert.load_pytorch_weights("/tmp/_bench_s.pt", s_arch,
                                                    image_shape=shape, dtype=dtype)
  t_net, s_net = t_net.to(dev), s_net.to(dev)
  teacher = teacher_lib.Teacher(t_model, t_vars, "random")
  objective = objectives.get_objective("mixacm")
  state = train.create_train_state(
      s_model, shape, config.optim, seed=config.seed, steps_per_epoch=100,
      total_steps=10_000, objective_params=train.init_objective_params(
          config.objective, objective, s_model, teacher, shape, seed=config.seed))
  state = state.replace(params={"model": s_vars["params"],
                                "objective": state.params["objective"]},
                        batch_stats=s_vars["batch_stats"])
  kernels = {k: torch.tensor(np.asarray(v["kernel"]), requires_grad=True, device=dev)
             for k, v in state.params["objective"].items()}
  s_acts, t_acts = hooked(s_net, s_hooks), hooked(t_net, t_hooks)
  opt = torch.optim.SGD(list(s_net.parameters()) + list(kernels.values()), lr=0.1, momentum=0.9,
                        weight_decay=5e-4)

  rng = np.random.RandomState(0)
  x = rng.rand(args.batch, *shape).astype(np.float32)
  y = rng.randint(0, s_model.num_classes, args.batch)
  x_t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(dev)
  y_t = torch.from_numpy(y.astype(np.int64)).to(dev)

  # 1. Same loss on the same inputs (mixing off), before any update.
  no_mix = cfg.copy_and_resolve_references()
  no_mix.mixacm.mixup_alpha = 0.0
  ctx = objectives.ObjectiveContext(
      forward=lambda prm, *a: train.make_forward(s_model)(prm["model"], *a),
      batch_stats=state.batch_stats, rng=jax.random.PRNGKey(0), cfg=no_mix.mixacm,
      teacher=teacher_lib.frozen_forward(t_model, t_vars))
  with common.exact_float32(torch):
    ours_loss = jax.jit(lambda prm, b: jax.vmap(
        lambda b: objective.loss_fn(prm, ctx, b)[0], axis_name=parallel.AXIS)(
            jax.tree_util.tree_map(lambda v: v[None], b))[0])(
                state.params, {"image": x, "label": y})
    with autocast():
      ref_loss = torch_loss(s_net, t_net, s_acts, t_acts, kernels, x_t, y_t, y_t,
                            torch.ones(args.batch, device=dev), no_mix.mixacm)
  diff = abs(float(ours_loss) - float(ref_loss.detach()))
  tol = 1e-4 if dtype == "float32" else 0.05 * max(1.0, abs(float(ref_loss.detach())))
  print(f"loss ours {float(ours_loss):.6f} PyTorch {float(ref_loss.detach()):.6f} "
        f"|diff| {diff:.2e} (tolerance {tol:.0e}, {dtype})")
  assert diff < tol, "the two steps compute different losses; timing them would be meaningless"

  # 2. Timing: the real pmapped train step vs the PyTorch step, both with mixup (alpha = 1).
  devices = jax.devices()[:args.host_devices] if args.device == "cpu" else jax.devices()[:1]
  if args.batch % len(devices):
    raise SystemExit(f"--batch={args.batch} does not split over {len(devices)} devices")
  step = train.make_p_train_step(cfg, s_model, objective, t_model, devices=devices, donate=True)
  p_state = parallel.replicate(state, devices=devices)
  p_teacher = parallel.replicate(t_vars, devices=devices)
  batch = {"image": x.reshape(len(devices), -1, *x.shape[1:]),
           "label": y.reshape(len(devices), -1)}
  t0 = time.perf_counter()
  p_state, m = step(p_state, batch, p_teacher)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  ours = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    p_state, m = step(p_state, batch, p_teacher)
    jax.block_until_ready(m)
    ours.append(time.perf_counter() - t0)

  def make_torch_step(loss_fn):
    def torch_step():
      lam = float(np.random.beta(1.0, 1.0))
      perm = torch.randperm(args.batch, device=dev)
      xm = lam * x_t + (1 - lam) * x_t[perm]
      with autocast():
        loss = loss_fn(xm, y_t, y_t[perm], torch.full((args.batch,), lam, device=dev))
      opt.zero_grad()
      loss.backward()
      opt.step()
      sync()
    return torch_step

  eager_loss = lambda xm, ya, yb, lam: torch_loss(s_net, t_net, s_acts, t_acts, kernels, xm,
                                                 ya, yb, lam, cfg.mixacm)
  variants = [("eager", make_torch_step(eager_loss))]
  if args.torch_compile:
    variants.append(("torch.compile", make_torch_step(torch.compile(eager_loss))))
  mo = statistics.median(ours)
  print(f"{common.describe_machine()}; torch {torch.__version__} on {dev.type} "
        f"({args.threads} threads); teacher {t_arch}{t_fields or ''}, student {s_arch}, "
        f"{shape[0]} px, batch {args.batch} over {len(devices)} device(s), {dtype}, "
        f"{args.steps} timed steps")
  print(f"ours  {args.batch / mo:7.1f} ex/s (median {mo:.3f} s, {min(ours):.3f}-{max(ours):.3f}; "
        f"first step incl. compile {compile_s:.1f} s)")
  for label, torch_step in variants:
    t0 = time.perf_counter()
    torch_step()
    first = time.perf_counter() - t0
    theirs = []
    for _ in range(args.steps):
      t0 = time.perf_counter()
      torch_step()
      theirs.append(time.perf_counter() - t0)
    mt = statistics.median(theirs)
    print(f"torch {args.batch / mt:7.1f} ex/s (median {mt:.3f} s, {min(theirs):.3f}-"
          f"{max(theirs):.3f}; first step {first:.1f} s) {label}")
    print(f"ratio (ours / PyTorch {label} speed) {mt / mo:.2f}x (target vs eager: >= 0.8x)")
  if args.breakdown and dev.type == "cpu":
    breakdown(args, t_model, t_vars, s_model, s_vars, t_net, s_net, x, y, x_t, y_t)


def breakdown(args, t_model, t_vars, s_model, s_vars, t_net, s_net, x, y, x_t, y_t):
  """Where the time goes: the teacher's forward and the student's forward + backward (plain
  CE) alone, each side, same weights and inputs."""
  import optax  # pylint: disable=g-import-not-at-top
  t_fwd = jax.jit(lambda v: t_model.apply(t_vars, v))
  s_grad = jax.jit(jax.grad(lambda p, v: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
      s_model.apply({"params": p, "batch_stats": s_vars["batch_stats"]}, v, train=True,
                    mutable=["batch_stats"])[0], y))))
  xj = jnp.asarray(x)

  def their_student():
    s_net.zero_grad()
    F.cross_entropy(s_net(x_t), y_t).backward()

  def their_teacher():
    with torch.no_grad():
      t_net(x_t)
  parts = [("teacher forward", lambda: jax.block_until_ready(t_fwd(xj)), their_teacher),
           ("student fwd+bwd", lambda: jax.block_until_ready(s_grad(s_vars["params"], xj)),
            their_student)]
  for name, ours_fn, theirs_fn in parts:
    ours_fn()
    theirs_fn()
    o = statistics.median([_time(ours_fn) for _ in range(args.steps)])
    t = statistics.median([_time(theirs_fn) for _ in range(args.steps)])
    print(f"  {name:16s} ours {o:.3f} s | PyTorch {t:.3f} s | ratio {t / o:.2f}x")


def _time(fn):
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


if __name__ == "__main__":
  main()
