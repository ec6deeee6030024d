"""What jax-cifar's predictions take as images (uint8 [N, H, W, 3]), and how to get there.

`predict`, a predictor's `run` (evaluate's tools on images of your own) and `to_model_input` share
these checks: float pixels in [0, 1] had been divided by 255 a second time, silently (an audit).
"""

from __future__ import annotations

import warnings

import numpy as np


def hint(images: np.ndarray) -> str:
  """How to turn these images into uint8 [N, H, W, 3], when that is clear."""
  if images.ndim == 3 and images.shape[-1] == 3:
    return '; one image is images[None]'
  if images.ndim == 3 and images.shape[0] == 3:  # (A torch image; not 3 grayscale ones: a review.)
    return '; one channels-first (PyTorch) image becomes images.transpose(1, 2, 0)[None]'
  if images.ndim in (3, 4) and images.shape[-1] == 4:
    return '; RGBA images become RGB as images[..., :3]' + ('[None]' if images.ndim == 3 else '')
  if images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 1):
    return '; grayscale images become RGB as np.repeat(images.reshape(*images.shape[:3], 1), 3, -1)'
  if images.ndim == 4 and images.shape[1] == 3 and images.shape[-1] != 3:
    return ('; channels first (PyTorch): images.transpose(0, 2, 3, 1) (or, for a torch tensor, '
            'images.permute(0, 2, 3, 1).numpy())')
  if not images.size or images.dtype == np.uint8:
    return ''
  if np.issubdtype(images.dtype, np.integer) and 0 <= images.min() and images.max() <= 255:
    return '; these pixels fit: images.astype(np.uint8)'
  if not np.issubdtype(images.dtype, np.floating):
    return ''
  if np.isnan(images).any():
    return '; these hold NaN'
  if images.min() < 0:  # Normalised already ((x - mean) / std): the 0-255 hint would be wrong.
    return ('; these look normalised already (negative values): give the pixels before '
            'normalisation (predict resizes and normalises as config.model says), or call '
            'model(x, train=False) on images normalised the same way')
  # Pixels of 0-255 in a float array (cv2, PIL through np.float32): scaling them by 255 had
  # wrapped them around in uint8 (200 -> 56), silently (an audit).
  return ('; float images in [0, 1] become uint8 as (images * 255).round().astype(np.uint8)'
          if images.max() <= 1 else
          '; float pixels of 0-255 become uint8 as images.round().clip(0, 255).astype(np.uint8)')


def uint8_images(images, who: str) -> np.ndarray:
  """`images` as a numpy array, or a ValueError naming `who` when they are not uint8 [N, H, W, 3]."""
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or 0 in images.shape[1:]:
    raise ValueError(f'{who} expects uint8 images [N, H, W, 3], got {images.dtype} '
                     f'{images.shape}{hint(images)}')
  return images


def warn_if_scaled_down(images: np.ndarray, who: str, stacklevel: int = 3) -> None:
  """A warning when every pixel is 0 or 1 (float images in [0, 1] cast to uint8 unscaled)."""
  if not len(images) or images.max() > 1:
    return
  black = ('if they are black images on purpose, ignore this; otherwise, '
           if images.max() == 0 else '')
  warnings.warn(f'{who}: every pixel of these {len(images)} uint8 images is 0 or 1: {black}were '
                'float images in [0, 1] cast without scaling? (images * 255).round().astype('
                'np.uint8) gives the 0-255 range the model was trained on', UserWarning,
                stacklevel=stacklevel)
