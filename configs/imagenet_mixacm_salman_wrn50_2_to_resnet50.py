"""MixACM on ImageNet: RobustBench's Salman2020Do_50_2 (L-inf 4/255 adversarially trained
Wide-ResNet-50-2, read from ./models/imagenet/Linf/) distilled into a torchvision ResNet-50,
at 224 px, bfloat16 on accelerators; evaluated on RobustBench's 5,000 validation images.

    mixacm --config=configs/imagenet_mixacm_salman_wrn50_2_to_resnet50.py --workdir=/tmp/r50 \
        --config.data.data_dir=<prepared TFDS> --config.teacher.model_dir=./models
"""
from mixacm_jax.configs import imagenet


def get_config():
  return imagenet.mixacm_config("imagenet_resnet50", "Salman2020Do_50_2")
