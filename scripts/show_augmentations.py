"""Draws a PNG grid of the on-device augmentations on real CIFAR-100 test images.

  python scripts/show_augmentations.py --data_dir D --out docs/augmentations.png

One row per op (AutoAugment's magnitude bins 1..9 with random signs, left to right) and per
recipe (crop/flip, erasing, the three policies, the full recipe, each robustness augmentation
and AugMix): the original in the first column, then independent draws of the same image.
"""

import argparse
import os

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

from jax_cifar.configs import default  # pylint: disable=wrong-import-position
from jax_cifar.augment import pipeline as augment  # pylint: disable=wrong-import-position
from jax_cifar.augment import autoaugment as aa  # pylint: disable=wrong-import-position
from jax_cifar.data import cifar100  # pylint: disable=wrong-import-position

DRAWS = 8
RECIPES = {  # row label -> overrides of the default `augment` config
    'crop 4 + flip': dict(),
    'crop 4 reflect + flip': dict(crop_mode='reflect'),
    'random erasing p=1': dict(crop_padding=0, flip=False, erasing_prob=1.0),
    'AutoAugment CIFAR10': dict(crop_padding=0, flip=False, policy='autoaugment_cifar10'),
    'RandAugment (2, 9)': dict(crop_padding=0, flip=False, policy='randaugment'),
    'TrivialAugmentWide': dict(crop_padding=0, flip=False, policy='trivialaugment'),
    'crop + flip + AA + erase .25': dict(policy='autoaugment_cifar10', erasing_prob=0.25),
    'RandomResizedCrop .35-1': dict(crop_padding=0, flip=False, rrc_prob=1.0),
    'ColorJitter .4 .4 .4 .1': dict(crop_padding=0, flip=False, color_jitter_prob=1.0),
    'GaussianBlur 3, s .1-2': dict(crop_padding=0, flip=False, blur_prob=1.0),
    'JPEG-like q 20-95': dict(crop_padding=0, flip=False, jpeg_prob=1.0, jpeg_quality=(20, 95)),
    'noise std 0-.1': dict(crop_padding=0, flip=False, noise_prob=1.0),
    'AugMix (3, 3, -1, 1)': dict(crop_padding=0, flip=False, augmix=True),
    'all robustness, p=.5': dict(augmix=True, rrc_prob=0.5, color_jitter_prob=0.5, blur_prob=0.5,
                                 jpeg_prob=0.5, noise_prob=0.5),
}


def op_rows(images: np.ndarray, rng: np.random.Generator) -> list[tuple[str, np.ndarray, list[str]]]:
  """(label, [DRAWS] outputs, captions) for each op at increasing AutoAugment bins."""
  space = aa.augmentation_space('autoaugment_cifar10', 10, images.shape[1:3])
  rows = []
  for i, name in enumerate(aa.OP_NAMES[1:]):
    mags, signed = space[name]
    bins = np.linspace(1, 9, DRAWS).round().astype(int)
    values = [0.0] * DRAWS if mags is None else [
        float(mags[b]) * (rng.choice([-1.0, 1.0]) if signed else 1.0) for b in bins]
    image = jnp.asarray(images[i % len(images)])
    outs = np.stack([np.asarray(aa.apply_named(image, name, v)) for v in values])
    if mags is None:  # no magnitude: one output says it all
      rows.append((name, outs[:1], ['']))
    else:
      rows.append((name, outs, [caption(name, v) for v in values]))
  return rows


def caption(name: str, value: float) -> str:
  """What an op's magnitude does, in its unit (bare signed numbers had said nothing, Posterize's
  '+8' less: a figure review). The enhancements multiply by 1 + value, as torchvision's do."""
  if name == 'Posterize':
    return f'{int(value)} bits'
  if name == 'Rotate':
    return f'{value:+.0f}°'
  if name.startswith('Translate'):
    return f'{value:+.0f} px'
  if name.startswith('Shear'):
    return f'shear {value:+.2f}'
  if name == 'Solarize':
    return f'above {value:.0f}'
  if name in ('Brightness', 'Color', 'Contrast', 'Sharpness'):
    return f'x{1 + value:.2f}'
  return f'{value:+.3g}'


def recipe_rows(images: np.ndarray, seed: int) -> list[tuple[str, np.ndarray, list[str]]]:
  rows = []
  for j, (label, overrides) in enumerate(RECIPES.items()):
    cfg = default.get_config().augment
    cfg.update(overrides)
    image = images[(len(aa.OP_NAMES) + j) % len(images)]
    batch = jnp.asarray(np.repeat(image[None], DRAWS, axis=0))
    outs = np.asarray(jax.jit(lambda k, x, cfg=cfg: augment.augment_batch(k, x, cfg))(
        jax.random.key(seed + j), batch))
    rows.append((label, outs, [''] * DRAWS))
  return rows


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data_dir', default=os.environ.get('JAX_CIFAR_DATA_DIR', ''),
                      help='folder holding cifar-100-python/ (default: $JAX_CIFAR_DATA_DIR)')
  parser.add_argument('--out', default='docs/augmentations.png')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--dpi', type=int, default=110)
  args = parser.parse_args(argv)
  if not args.data_dir:
    parser.error('--data_dir is required (or set JAX_CIFAR_DATA_DIR)')

  try:
    test = cifar100.load_split(args.data_dir, 'test', download=False)
  except cifar100.DataError as e:  # It had been a traceback (an audit).
    parser.exit(1, f'error: {e}\n')
  pick = np.random.default_rng(args.seed).choice(len(test.images), 32, replace=False)
  images = test.images[pick]
  rows = op_rows(images, np.random.default_rng(args.seed)) + recipe_rows(images, args.seed)
  originals = [images[i % len(images)] for i in range(len(aa.OP_NAMES) - 1)] + [
      images[(len(aa.OP_NAMES) + j) % len(images)] for j in range(len(RECIPES))]

  fig, axes = plt.subplots(len(rows), DRAWS + 1, figsize=(1.0 * (DRAWS + 1) + 1.6, 1.0 * len(rows)),
                           gridspec_kw=dict(wspace=0.05, hspace=0.35, top=0.965, bottom=0.01))
  for r, ((label, outs, captions), original) in enumerate(zip(rows, originals)):
    tiles = [(original, 'original')] + list(zip(outs, captions))
    for c, ax in enumerate(axes[r]):
      if c >= len(tiles):
        ax.axis('off')
        continue
      ax.imshow(tiles[c][0], interpolation='nearest')
      ax.set_xticks([])
      ax.set_yticks([])
      if tiles[c][1]:
        ax.set_title(tiles[c][1], fontsize=8, pad=2)
    axes[r, 0].set_ylabel(label, rotation=0, ha='right', va='center', fontsize=8)
  fig.suptitle('jax_cifar augmentations (torchvision-exact ops) on CIFAR-100 test images', y=0.99)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  fig.savefig(args.out, dpi=args.dpi, bbox_inches='tight')
  print(f'wrote {args.out} ({os.path.getsize(args.out) / 1024:.0f} KiB)')


if __name__ == '__main__':
  main()
