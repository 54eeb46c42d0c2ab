"""RobustBench's ImageNet protocol for any model: standard AutoAttack, L-inf at 4/255, on
its 5,000 validation images (data.eval_ids), Res256Crop224 (the shorter side resized to 256,
the centre 224 cropped), in float32 on every device. A trained workdir:

    mixacm --config=configs/imagenet_robustbench_eval.py --workdir=/tmp/r18 --mode=eval \
        --config.data.data_dir=<prepared TFDS> --config.model.name=imagenet_resnet18

A RobustBench entry by name: convert it into a workdir first (offline, from the folder
RobustBench's load_model fills), then evaluate with the model flags the conversion prints
(Wong2020Fast takes --config.data.eval_resize=0 --config.data.image_size=288, its Crop288):

    mixacm --mode=convert --workdir=/tmp/salman --config.convert.robustbench=Salman2020Do_R50 \
        --config.convert.dataset=imagenet --config.convert.model_dir=./models
    mixacm --config=configs/imagenet_robustbench_eval.py --workdir=/tmp/salman --mode=eval \
        --config.data.data_dir=<prepared TFDS> --config.model.name=imagenet_resnet50 \
        --config.model.mean='(0.485, 0.456, 0.406)' --config.model.std='(0.229, 0.224, 0.225)'
"""
from mixacm_jax.configs import imagenet


def get_config():
  config = imagenet.get_config()
  config.eval.attacks = "clean,autoattack"
  config.eval.autoattack_version = "standard"
  config.model.dtype = "float32"  # RobustBench's protocol; bfloat16 rounds the inputs
  return config
