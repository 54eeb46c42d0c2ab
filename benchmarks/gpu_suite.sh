#!/usr/bin/env bash
# The GPU benchmark run, at most ~10 minutes on one NVIDIA GPU; needs no TensorFlow, TFDS or
# Grain (nothing here reads a dataset). Prints, each next to its PyTorch peer on the same GPU:
#   1. the MixACM train step (WRN-34-10 teacher -> ResNet-18, batch 128), float32 and
#      bfloat16, vs PyTorch eager and torch.compile;
#   2. achieved FLOP/s of that step vs the measured matmul peak (bfloat16);
#   3. clean inference and PGD-20 vs torchattacks (ResNet-18, batch 512);
#   4. AutoAttack standard vs torchattacks and the original AutoAttack code on the authors'
#      robust ResNet-18 (inputs it is partly robust on, so every stage works);
#   5. the ImageNet MixACM step (torchvision's ResNet-50 teacher -> ResNet-18, 224 px,
#      batch 128, bfloat16) vs PyTorch eager.
#
#   bash benchmarks/gpu_suite.sh            # on the GPU machine
#   bash benchmarks/gpu_suite.sh --tiny     # smoke run at tiny sizes on CPU (what CI can do)
#   bash benchmarks/gpu_suite.sh --vendor   # here: copy the pure-Python packages a stock JAX
#                                           # GPU image lacks into vendor/ (carry it along)
#
# A step that fails or runs out of its time slot is reported and the suite goes on.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-gpu}"

if [[ "$MODE" == "--vendor" ]]; then
  mkdir -p vendor
  for pkg in ml_collections absl torchattacks robustbench pyautoattack torchvision; do
    # find_spec, not import: robustbench's __init__ needs torchvision, which is not needed here
    dir=$(python -c "import importlib.util as u; print(u.find_spec('$pkg').submodule_search_locations[0])") || exit 1
    rm -rf "vendor/$pkg" && cp -r "$dir" "vendor/$pkg"
  done
  rm -rf vendor/robustbench/model_zoo/models vendor/*/__pycache__  # weights are not needed
  # torchvision's compiled operators are built for another torch: only its model files serve
  # (tools/torch_reference.py), and an image that has its own torchvision uses that one.
  find vendor/torchvision -name "*.so*" -delete
  du -sh vendor
  exit 0
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # mixacm_jax from this checkout, installed or not
[[ -d vendor ]] && export PYTHONPATH="$PWD/vendor:$PYTHONPATH"

if [[ "$MODE" == "--tiny" ]]; then
  DEVICE=cpu; SLOT=300
  STEP="--batch=4 --steps=1 --teacher_depth=10 --teacher_width=1"
  LIMIT="--batch=4 --steps=1 --teacher_depth=10 --teacher_width=1 --student_width=8"
  ATTACK="--arch=wrn16_2 --batch=4 --repeats=1"
  ROBUST="--batch=2 --attacks=apgd-ce"
  IMAGENET="--batch=2 --steps=1 --image_size=64"
else
  DEVICE=gpu; SLOT=0
  STEP="--batch=128 --steps=10 --teacher_depth=34 --teacher_width=10"
  LIMIT="--batch=128 --steps=10"
  ATTACK="--arch=resnet18 --batch=512 --repeats=3"
  ROBUST="--batch=256 --attacks=autoattack --original"
  IMAGENET="--batch=128 --steps=10"
fi

python - "$DEVICE" <<'EOF' || exit 2
import importlib.util, sys
missing = [m for m in ("jax", "flax", "optax", "torch", "ml_collections", "torchattacks",
                       "robustbench", "pyautoattack", "torchvision") if importlib.util.find_spec(m) is None]
if missing:
  sys.exit(f"missing: {', '.join(missing)} (run `bash benchmarks/gpu_suite.sh --vendor` on a "
           "machine that has them and carry vendor/ here)")
if sys.argv[1] == "gpu":
  import jax, torch
  if jax.default_backend() != "gpu" or not torch.cuda.is_available():
    sys.exit(f"no GPU: JAX backend {jax.default_backend()}, torch CUDA "
             f"{torch.cuda.is_available()}")
  print(f"{jax.devices()[0].device_kind}; jax {jax.__version__}, torch {torch.__version__}")
EOF

run() {  # run <seconds> <script> <args...>
  local slot=$1; shift
  [[ "$SLOT" != 0 ]] && slot=$SLOT
  echo; echo "\$ python $*"
  timeout "$slot" python "$@"
  local rc=$?
  [[ $rc -ne 0 ]] && echo "(exit $rc$([[ $rc -eq 124 ]] && echo ": over its ${slot} s slot"))"
  return 0
}

start=$SECONDS
run 110 benchmarks/mixacm_step_vs_pytorch.py --device=$DEVICE --dtype=float32 $STEP --torch_compile
run 110 benchmarks/mixacm_step_vs_pytorch.py --device=$DEVICE --dtype=bfloat16 $STEP --torch_compile
run 60 benchmarks/hardware_limit.py --device=$DEVICE --dtype=bfloat16 $LIMIT
run 60 benchmarks/attacks_vs_torchattacks.py --device=$DEVICE --attacks=clean,pgd20 $ATTACK
run 130 benchmarks/attacks_vs_torchattacks.py --device=$DEVICE --arch=autoattack_resnet18 \
  --inputs=confident --repeats=1 $ROBUST
run 150 benchmarks/mixacm_step_vs_pytorch.py --device=$DEVICE --dtype=bfloat16 --imagenet $IMAGENET
echo; echo "gpu_suite: $((SECONDS - start)) s"
