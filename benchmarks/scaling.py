"""Data-parallel scaling of the MixACM train step: step time on 1, 2, 4, 8 devices with a
fixed per-device batch (weak scaling); efficiency = T(1) / T(N).

On the CPU the devices are simulated (`--xla_force_host_platform_device_count`, one process
per count) and share the same cores, so the figure checks that the pmapped step runs and
shows the overhead, not real scaling; real numbers need several GPUs/TPUs (`--device=gpu`
uses the visible GPUs and skips counts beyond them).

  python benchmarks/scaling.py --per_device_batch=16 --steps=3
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def measure(args, n):
  import common  # pylint: disable=g-import-not-at-top
  dtype = common.setup_device(args)
  import jax  # pylint: disable=g-import-not-at-top
  if jax.device_count() < n:
    return None
  config = common.step_config("resnet18", {"base_width": args.student_width}, "wrn",
                              {"depth": args.teacher_depth, "widen_factor": args.teacher_width},
                              "mixacm", dtype)
  run_step, _, _, _ = common.build_train_step(config, args.per_device_batch * n, n)
  run_step()
  med, lo, hi = common.timed(run_step, args.steps)
  return {"devices": n, "median_s": med, "min_s": lo, "max_s": hi,
          "machine": common.describe_machine()}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--devices", default="1,2,4,8")
  p.add_argument("--per_device_batch", type=int, default=16)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--student_width", type=int, default=16)
  p.add_argument("--teacher_depth", type=int, default=16)
  p.add_argument("--teacher_width", type=int, default=2)
  p.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
  sys.path.insert(0, HERE)
  import common  # pylint: disable=g-import-not-at-top
  common.add_device_flags(p)
  args = p.parse_args()
  if args.child:
    print("RESULT " + json.dumps(measure(args, args.child)), flush=True)
    return
  results = []
  for n in [int(v) for v in args.devices.split(",")]:
    if args.device == "cpu":
      env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
      out = subprocess.run([sys.executable, __file__, f"--child={n}", *sys.argv[1:]], env=env,
                           capture_output=True, text=True, check=False)
      line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
      if not line:
        raise SystemExit(f"{n} devices failed:\n{out.stderr[-2000:]}")
      r = json.loads(line[0][7:])
    else:
      r = measure(args, n)
    if r is None:
      print(f"{n} devices: skipped, only fewer are visible")
      continue
    results.append(r)
    base = results[0]["median_s"]
    print(f"{n} device(s): step {r['median_s']:.3f} s ({r['min_s']:.3f}-{r['max_s']:.3f}), "
          f"global batch {args.per_device_batch * n}, {args.per_device_batch * n / r['median_s']:.1f} "
          f"ex/s, weak-scaling efficiency {base / r['median_s']:.2f}", flush=True)
  if results:
    print(f"machine: {results[0]['machine']}"
          + (" (simulated devices sharing the CPU cores)" if args.device == "cpu" else ""))


if __name__ == "__main__":
  main()
