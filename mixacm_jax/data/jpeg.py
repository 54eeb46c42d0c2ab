"""JPEG datasets of any image size (ImageNet): decoding, training crops and RobustBench's
evaluation crops, one example at a time, in NumPy, as uint8 (the batch is made float32).

* Decoding: simplejpeg (libjpeg-turbo; it releases the GIL, so Grain's threads decode in
  parallel). An image TFDS has already decoded (an array) passes through.
* Training: torchvision's RandomResizedCrop (area fraction in [scale_min, 1], aspect ratio in
  [3/4, 4/3], 10 tries, then the centre crop of the clamped ratio) and a horizontal flip.
* Evaluation: torchvision's Resize(eval_resize) (shorter side; 0: none) then CenterCrop(size):
  RobustBench's Res256Crop224 is (256, 224), its Crop288 (0, 288), its BicubicRes256Crop224
  the first with bicubic interpolation.
* Resizing: Pillow's filters (bilinear unless asked), the ones torchvision applies to PIL
  images.
"""
import io
import math
from typing import Dict, Tuple

import numpy as np
from PIL import Image
import simplejpeg

from mixacm_jax.errors import DataError

RATIO = (3 / 4, 4 / 3)
INTERPOLATIONS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def decode(data) -> np.ndarray:
  """(H, W, 3) uint8 RGB from JPEG bytes (or an already decoded image)."""
  if isinstance(data, np.ndarray) and data.ndim == 3:
    return data if data.shape[-1] == 3 else np.repeat(data[..., :1], 3, axis=-1)
  try:
    return simplejpeg.decode_jpeg(bytes(data), colorspace="RGB")
  except ValueError as e:  # a PNG or CMYK file among the JPEGs: Pillow reads any format
    try:
      return np.asarray(Image.open(io.BytesIO(bytes(data))).convert("RGB"))
    except OSError:
      raise DataError(f"an image of {len(bytes(data))} bytes is not a readable image: "
                      f"{e}") from None


def resize(image: np.ndarray, height: int, width: int,
           interpolation: str = "bilinear") -> np.ndarray:
  if image.shape[:2] == (height, width):
    return image
  return np.asarray(Image.fromarray(image).resize((width, height),
                                                  INTERPOLATIONS[interpolation]))


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            scale_min: float) -> Tuple[int, int, int, int]:
  """(top, left, h, w) as torchvision's RandomResizedCrop.get_params draws it."""
  area = height * width
  log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
  for _ in range(10):
    target = area * rng.uniform(scale_min, 1.0)
    ratio = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target * ratio)))
    h = int(round(math.sqrt(target / ratio)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  ratio = width / height  # fallback: the whole image, its ratio clamped
  if ratio < RATIO[0]:
    w, h = width, int(round(width / RATIO[0]))
  elif ratio > RATIO[1]:
    h, w = height, int(round(height * RATIO[1]))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """torchvision's CenterCrop: zero-padded first where the image is smaller than `size`."""
  h, w = image.shape[:2]
  if h < size or w < size:
    top, left = max(size - h, 0) // 2, max(size - w, 0) // 2
    image = np.pad(image, ((top, max(size - h, 0) - top), (left, max(size - w, 0) - left),
                           (0, 0)))
    h, w = image.shape[:2]
  top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
  return image[top:top + size, left:left + size]


def shorter_side_resize(image: np.ndarray, side: int,
                        interpolation: str = "bilinear") -> np.ndarray:
  """torchvision's Resize(side): the shorter side to `side`, the longer in proportion."""
  h, w = image.shape[:2]
  if h <= w:
    return resize(image, side, int(side * w / h), interpolation)
  return resize(image, int(side * h / w), side, interpolation)


def train_example(example: Dict, rng: np.random.Generator, *, size: int, scale_min: float,
                  flip: bool) -> Dict[str, np.ndarray]:
  image = decode(example["image"])
  top, left, h, w = random_resized_crop_box(*image.shape[:2], rng, scale_min)
  image = resize(image[top:top + h, left:left + w], size, size)
  if flip and rng.random() < 0.5:
    image = np.ascontiguousarray(image[:, ::-1])
  return {"image": image, "label": np.asarray(example["label"], np.int32)}


def eval_example(example: Dict, *, size: int, resize_to: int,
                 interpolation: str = "bilinear") -> Dict[str, np.ndarray]:
  image = decode(example["image"])
  if resize_to:
    image = shorter_side_resize(image, resize_to, interpolation)
  return {"image": np.ascontiguousarray(center_crop(image, size)),
          "label": np.asarray(example["label"], np.int32)}
