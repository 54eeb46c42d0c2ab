"""MixACM on ImageNet: RobustBench's Salman2020Do_R50 (L-inf 4/255 adversarially trained
ResNet-50, read from ./models/imagenet/Linf/) distilled into a torchvision ResNet-18, at
224 px, bfloat16 on accelerators; evaluated on RobustBench's 5,000 validation images.

    mixacm --config=configs/imagenet_mixacm_salman_r50_to_resnet18.py --workdir=/tmp/r18 \
        --config.data.data_dir=<prepared TFDS> --config.teacher.model_dir=./models
"""
from mixacm_jax.configs import imagenet


def get_config():
  return imagenet.mixacm_config("imagenet_resnet18", "Salman2020Do_R50")
