"""Training cost: a MixACM epoch vs a PGD-10 AT epoch vs a TRADES epoch, same student.

Each objective runs the project's own pmapped train step on the same random CIFAR-shaped
batch; the median step time (after a compiling step) times the steps of a 50,000-example
epoch gives the epoch time, next to the network passes per example the objective counts
(student forward + backward, teacher forward). MixACM's cost includes the frozen teacher's
forward. Also prints the FLOPs XLA counts for each step, a hardware-independent measure.

  python benchmarks/cost_model.py --batch=64 --steps=5
  python benchmarks/cost_model.py --device=gpu --batch=256 --student_width=64 \
      --teacher=wrn --teacher_depth=34 --teacher_width=10
"""
import argparse

import common  # sets up sys.path  # pylint: disable=g-bad-import-order


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--student_width", type=int, default=64, help="ResNet-18 base width (64: full)")
  p.add_argument("--teacher", default="wrn", choices=["wrn", "resnet18"])
  p.add_argument("--teacher_depth", type=int, default=16)
  p.add_argument("--teacher_width", type=int, default=4)
  p.add_argument("--attack_steps", type=int, default=10)
  p.add_argument("--epoch_examples", type=int, default=50_000)
  p.add_argument("--objectives", default="mixacm,pgd_at,trades")
  common.add_device_flags(p)
  args = p.parse_args()
  dtype = common.setup_device(args)
  teacher_kwargs = ({"depth": args.teacher_depth, "widen_factor": args.teacher_width}
                    if args.teacher == "wrn" else {"base_width": args.teacher_width})
  print(common.describe_machine())
  print(f"student ResNet-18 (width {args.student_width}); teacher {args.teacher} "
        f"{teacher_kwargs}; batch {args.batch}; {dtype}; training attacks "
        f"{args.attack_steps} steps; epoch = {args.epoch_examples} examples")
  rows = {}
  for name in args.objectives.split(","):
    config = common.step_config("resnet18", {"base_width": args.student_width}, args.teacher,
                                teacher_kwargs, name, dtype, args.attack_steps)
    run_step, p_step, step_args, objective = common.build_train_step(config, args.batch, 1)
    flops = common.hlo_flops(p_step, *step_args)
    run_step()  # compiles
    med, lo, hi = common.timed(run_step, args.steps)
    per = objective.passes(objective.settings(config.objective))
    passes = per["forward"] + per["backward"] + per["teacher_forward"]
    epoch_s = med * args.epoch_examples / args.batch
    rows[name] = (med, epoch_s, passes, flops)
    print(f"{name:8s} step {med:.3f} s ({lo:.3f}-{hi:.3f}) | epoch {epoch_s / 60:7.1f} min | "
          f"{passes:2d} passes/example ({per['forward']} fwd, {per['backward']} bwd, "
          f"{per['teacher_forward']} teacher fwd) | {flops / 1e9:8.1f} GFLOP/step", flush=True)
  if "mixacm" in rows:
    for other in ("pgd_at", "trades"):
      if other in rows:
        m, o = rows["mixacm"], rows[other]
        print(f"MixACM / {other}: time {m[1] / o[1]:.2f}x, passes {m[2] / o[2]:.2f}x, "
              f"FLOPs {m[3] / o[3]:.2f}x (target for PGD-10 AT: <= 0.3x)")


if __name__ == "__main__":
  main()
