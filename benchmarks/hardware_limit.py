"""How close the MixACM step (WRN-34-10 teacher forward + ResNet-18 student step by default)
comes to the machine: FLOPs per step from XLA's cost analysis over the measured step time,
against the measured peak of a large matmul through JAX in the same dtype.

  python benchmarks/hardware_limit.py --batch=32 --steps=3               # CPU, float32
  python benchmarks/hardware_limit.py --device=gpu --batch=256 --steps=10  # GPU, bfloat16
"""
import argparse

import common  # sets up sys.path  # pylint: disable=g-bad-import-order


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--student_width", type=int, default=64)
  p.add_argument("--teacher_depth", type=int, default=34)
  p.add_argument("--teacher_width", type=int, default=10)
  p.add_argument("--objective", default="mixacm")
  common.add_device_flags(p)
  args = p.parse_args()
  dtype = common.setup_device(args)
  print(common.describe_machine())
  config = common.step_config("resnet18", {"base_width": args.student_width}, "wrn",
                              {"depth": args.teacher_depth, "widen_factor": args.teacher_width},
                              args.objective, dtype)
  run_step, p_step, step_args, _ = common.build_train_step(config, args.batch, 1)
  flops = common.hlo_flops(p_step, *step_args)
  run_step()
  med, lo, hi = common.timed(run_step, args.steps)
  peak = common.matmul_peak(dtype)
  achieved = flops / med
  print(f"{args.objective} step: WRN-{args.teacher_depth}-{args.teacher_width} teacher, "
        f"ResNet-18 (width {args.student_width}) student, batch {args.batch}, {dtype}")
  print(f"  {flops / 1e9:.1f} GFLOP/step (XLA cost analysis), step {med:.3f} s "
        f"({lo:.3f}-{hi:.3f}) -> {achieved / 1e9:.1f} GFLOP/s")
  print(f"  matmul peak ({dtype}) {peak / 1e9:.1f} GFLOP/s -> {100 * achieved / peak:.1f} % of "
        f"peak (GPU target: >= 40 % of the bf16 peak)")


if __name__ == "__main__":
  main()
