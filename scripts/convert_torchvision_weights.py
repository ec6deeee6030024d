"""Converts torchvision ResNet weights into the Flax checkpoint that `model.pretrained` loads.

  python scripts/convert_torchvision_weights.py --arch resnet50 --weights IMAGENET1K_V2 \
      --output weights/resnet50_v2
  python scripts/convert_torchvision_weights.py --arch resnet50 --state_dict r50.pth --output out

`.pth` files are read with `torch.load(weights_only=True)`: a pickle is code, and a downloaded
one must not run. Exits non-zero with a one-line reason on bad input; never leaves partial output.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any, Mapping

ARCHS = ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152')
log = logging.getLogger('convert')


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--arch', required=True, choices=ARCHS)
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument('--state_dict', help='a torchvision state_dict saved with torch.save')
  source.add_argument('--weights', help='torchvision weights name, e.g. IMAGENET1K_V1 (online)')
  parser.add_argument('--output', required=True, help='checkpoint directory to create')
  parser.add_argument('--overwrite', action='store_true', help='replace an existing --output')
  return parser.parse_args(argv)


def _unwrap(obj: Any) -> Mapping[str, Any]:
  """Accepts a bare state_dict or the common {'state_dict': ...} / {'model': ...} wrappers."""
  for key in ('state_dict', 'model'):
    if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
      obj = obj[key]
  if not isinstance(obj, Mapping):
    raise ValueError(f'expected a state_dict (names -> tensors), got {type(obj).__name__}')
  return obj


def load_state_dict(args: argparse.Namespace) -> tuple[Mapping[str, Any], str]:
  if args.state_dict and not os.path.isfile(args.state_dict):
    raise ValueError(f'--state_dict {args.state_dict}: no such file')
  import torch  # pylint: disable=import-outside-toplevel
  if args.state_dict:
    try:
      obj = torch.load(args.state_dict, map_location='cpu', weights_only=True)
    except Exception as e:  # an unsafe or corrupt pickle: report, never execute
      raise ValueError(f'cannot load {args.state_dict} with weights_only=True: '
                       f'{str(e).splitlines()[0]}') from e
    return _unwrap(obj), os.path.abspath(args.state_dict)
  import torchvision  # pylint: disable=import-outside-toplevel
  enum = torchvision.models.get_model_weights(args.arch)
  if args.weights not in enum.__members__:
    raise ValueError(f'--weights {args.weights}: {args.arch} has {", ".join(enum.__members__)}')
  weights = enum[args.weights]
  try:
    sd = weights.get_state_dict(progress=True)
  except OSError as e:  # URLError, socket errors: no internet
    raise ValueError(f'cannot download {weights.url} ({e}); offline, download it elsewhere and '
                     'pass --state_dict FILE.pth') from e
  return sd, weights.url


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s: %(message)s',
                      stream=sys.stderr)
  if os.path.exists(args.output) and not args.overwrite:
    print(f'error: --output {args.output} exists (pass --overwrite to replace it)', file=sys.stderr)
    return 1
  try:
    t = time.time()
    state_dict, source = load_state_dict(args)
    log.info('loaded %d tensors from %s (%.1fs)', len(state_dict), source, time.time() - t)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from jax_cifar import convert  # pylint: disable=import-outside-toplevel
    t = time.time()
    variables = convert.torch_to_flax(state_dict, args.arch)
    log.info('converted to %s layout (%.1fs)', args.arch, time.time() - t)
    t = time.time()
    convert.save_converted(variables, args.arch, args.output, source=source,
                           overwrite=args.overwrite)
    log.info('wrote %s (%.1fs)', args.output, time.time() - t)
  except (ValueError, OSError) as e:
    print(f'error: {e}'.replace('\n', ' '), file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
