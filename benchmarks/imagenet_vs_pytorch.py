"""ImageNet-size work here vs PyTorch, in one process: a ResNet-50 at 224 px (forward, and
forward + backward), with XLA's FLOP count per example; and the input pipeline's images/s per
CPU core against torchvision's transforms on PIL images.

  python benchmarks/imagenet_vs_pytorch.py --batch=8 --repeats=3
  python benchmarks/imagenet_vs_pytorch.py --part=pipeline --images=200

The model: torchvision's ResNet-50 (random weights and BatchNorm statistics) converted with
this project's port, so both sides hold the same weights; the logits must agree before
anything is timed. The pipeline: JPEGs of ImageNet's typical size (500x375 and 375x500,
quality 90); training = decode, random-resized crop to 224, flip; evaluation = decode,
Res256Crop224. One core: one thread, each side; all cores: ours through Grain's threads.
"""
import argparse
import io
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from PIL import Image  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mixacm_jax.data import jpeg  # noqa: E402
from mixacm_jax.port import convert  # noqa: E402

import common  # noqa: E402  sets up sys.path  # pylint: disable=g-bad-import-order
from tools import robustbench_zoo, torch_reference  # noqa: E402  # pylint: disable=g-bad-import-order


def _median(fn, repeats):
  fn()  # warm-up (and compilation)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def model_part(args):
  tv = torch_reference.torchvision_models()
  torch.manual_seed(0)
  net = robustbench_zoo.randomise_batchnorm(tv.resnet50(), 0)
  shape = (args.image_size, args.image_size, 3)
  torch.save(net.state_dict(), "/tmp/_bench_r50.pt")
  model, variables, _ = convert.load_pytorch_weights("/tmp/_bench_r50.pt", "imagenet_resnet50",
                                                     image_shape=shape)
  rng = np.random.RandomState(0)
  x = rng.rand(args.batch, *shape).astype(np.float32)
  y = rng.randint(0, 1000, args.batch)
  x_t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  y_t = torch.from_numpy(y.astype(np.int64))

  forward = jax.jit(lambda v, x: model.apply(v, x))
  with torch.no_grad():
    ref = net(x_t).numpy()
  diff = float(np.abs(np.asarray(forward(variables, x)) - ref).max())
  scale = float(np.abs(ref).max())
  print(f"logits: max |diff| {diff:.2e} of max |logit| {scale:.2e}")
  assert diff <= 1e-5 * max(scale, 1.0), "different logits: timing them would be meaningless"

  def loss(params, x):
    logits, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                            train=True, mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  grad = jax.jit(jax.grad(loss))
  xj = jnp.asarray(x)

  def theirs_grad():
    net.train().zero_grad()  # batch statistics, as ours
    F.cross_entropy(net(x_t), y_t).backward()

  def theirs_forward():
    with torch.no_grad():
      net.eval()(x_t)
  parts = [("forward (eval)", lambda: jax.block_until_ready(forward(variables, xj)),
            theirs_forward, common.hlo_flops(forward, variables, xj)),
           ("forward + backward (train)",
            lambda: jax.block_until_ready(grad(variables["params"], xj)), theirs_grad,
            common.hlo_flops(grad, variables["params"], xj))]
  print(f"ResNet-50, {args.image_size} px, batch {args.batch}, float32")
  for name, ours, theirs, flops in parts:
    o, t = _median(ours, args.repeats), _median(theirs, args.repeats)
    print(f"  {name:27s} ours {o:.3f} s | PyTorch eager {t:.3f} s | ratio {t / o:.2f}x | "
          f"XLA: {flops / args.batch / 1e9:.2f} GFLOP per example, "
          f"{flops / o / 1e9:.1f} GFLOP/s")


def _jpegs(n: int):
  rng = np.random.default_rng(0)
  out = []
  for i in range(n):
    h, w = (375, 500) if i % 2 else (500, 375)
    smooth = np.cumsum(rng.integers(-6, 7, (h, w, 3)), axis=1) + np.cumsum(
        rng.integers(-6, 7, (h, 1, 3)), axis=0)
    buf = io.BytesIO()
    Image.fromarray(np.clip(128 + smooth, 0, 255).astype(np.uint8)).save(buf, "JPEG",
                                                                          quality=90)
    out.append({"image": buf.getvalue(), "label": i % 1000})
  return out


def pipeline_part(args):
  torch_reference.torchvision_models()
  import torchvision.transforms as T  # pylint: disable=g-import-not-at-top
  examples = _jpegs(args.images)
  size = args.image_size
  theirs = {"train": T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(),
                                T.ToTensor()]),
            "eval": T.Compose([T.Resize(256), T.CenterCrop(size), T.ToTensor()])}
  rng = np.random.default_rng(0)
  # Ours makes uint8 crops and the batch float32; here each image is made float32, as ToTensor.
  as_float = lambda e: e["image"].astype(np.float32) / 255.0
  ours = {"train": lambda e: as_float(jpeg.train_example(e, rng, size=size, scale_min=0.08,
                                                          flip=True)),
          "eval": lambda e: as_float(jpeg.eval_example(e, size=size, resize_to=256))}
  pil = lambda e: Image.open(io.BytesIO(e["image"])).convert("RGB")
  torch.set_num_threads(1)
  print(f"pipeline: {len(examples)} JPEGs of 500x375 / 375x500, crops of {size} px")
  for kind in ("train", "eval"):
    o = _median(lambda: [ours[kind](e) for e in examples], args.repeats)
    t = _median(lambda: [theirs[kind](pil(e)) for e in examples], args.repeats)
    n = len(examples)
    print(f"  {kind:5s} one core: ours {n / o:6.1f} img/s | torchvision on PIL {n / t:6.1f} "
          f"img/s | ratio {t / o:.2f}x")
  grain_rate(examples, size, args)


def grain_rate(examples, size, args):
  """Ours through Grain as the pipeline runs it: an element per image, a thread per core
  (data.num_threads), then batches."""
  import functools  # pylint: disable=g-import-not-at-top
  import grain  # pylint: disable=g-import-not-at-top
  cores = os.cpu_count()
  crop = functools.partial(jpeg.train_example, size=size, scale_min=0.08, flip=True)
  ds = grain.MapDataset.source(examples).repeat().random_map(crop, seed=0)
  it = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=cores, prefetch_buffer_size=128))
            .batch(32))
  next(it)
  batches = max(1, len(examples) // 32)
  t0 = time.perf_counter()
  for _ in range(batches):
    next(it)
  rate = batches * 32 / (time.perf_counter() - t0)
  print(f"  train through Grain, {cores} threads: {rate:.1f} img/s ({rate / cores:.1f} per core)")


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--part", default="all", choices=["all", "model", "pipeline"])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--images", type=int, default=200)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--threads", type=int, default=os.cpu_count())
  args = p.parse_args()
  torch.set_num_threads(args.threads)
  print(f"{common.describe_machine()}; torch {torch.__version__}")
  if args.part in ("all", "model"):
    model_part(args)
  if args.part in ("all", "pipeline"):
    pipeline_part(args)


if __name__ == "__main__":
  main()
