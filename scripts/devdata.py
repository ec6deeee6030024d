"""The GPU checks' real data sets (.devdata/cifar_small.npz from gpu_prepare.sh; the full set that
gpu_pack_full.sh splits into .gpudata/) written in the official cifar-100-python layout, which the
trainer and jax_cifar.corrupt read."""

import pathlib
import pickle

import numpy as np


def write_cifar_folder(parent: pathlib.Path, npz: str = '.devdata/cifar_small.npz') -> dict:
  """Writes PARENT/cifar-100-python/{train,test,meta}; returns the npz's arrays.

  The npz holds {train,test}_{x,y} (uint8 NHWC images, labels); {train,test}_coarse and
  fine_names/coarse_names are written too where present (the full set has them).
  """
  data = dict(np.load(npz))
  folder = pathlib.Path(parent) / 'cifar-100-python'
  folder.mkdir(parents=True, exist_ok=True)
  for split in ('train', 'test'):
    x, y = data[f'{split}_x'], data[f'{split}_y']
    with open(folder / split, 'wb') as f:
      record = {'data': x.transpose(0, 3, 1, 2).reshape(len(x), 3072),
                'fine_labels': [int(v) for v in y]}
      if f'{split}_coarse' in data:
        record['coarse_labels'] = [int(v) for v in data[f'{split}_coarse']]
      pickle.dump(record, f, protocol=2)
  fine = ([str(n) for n in data['fine_names']] if 'fine_names' in data
          else [f'c{i}' for i in range(100)])
  coarse = ([str(n) for n in data['coarse_names']] if 'coarse_names' in data
            else [f'k{i}' for i in range(20)])
  with open(folder / 'meta', 'wb') as f:
    pickle.dump({'fine_label_names': fine, 'coarse_label_names': coarse}, f, protocol=2)
  return data


def pack_full(cifar_dir: str, npz: str) -> None:
  """The whole official CIFAR-100 (CIFAR_DIR/cifar-100-python) as one uncompressed npz, NHWC."""
  import sys  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
  from jax_cifar.data import cifar100  # pylint: disable=g-import-not-at-top
  folder = cifar100.find_or_fetch(cifar_dir, download=False)
  out = {}
  for split in ('train', 'test'):
    raw = cifar100.read_pickle(folder / split)
    images = np.asarray(raw['data'], np.uint8).reshape(-1, 3, 32, 32)
    out[f'{split}_x'] = images.transpose(0, 2, 3, 1)
    out[f'{split}_y'] = np.asarray(raw['fine_labels'], np.uint8)
    if 'coarse_labels' in raw:
      out[f'{split}_coarse'] = np.asarray(raw['coarse_labels'], np.uint8)
  meta = cifar100.read_pickle(folder / 'meta')
  out['fine_names'] = np.asarray(meta['fine_label_names'])
  out['coarse_names'] = np.asarray(meta['coarse_label_names'])
  np.savez(npz, **out)


if __name__ == '__main__':  # python scripts/devdata.py pack CIFAR_DIR OUT.npz | write NPZ PARENT
  import sys  # pylint: disable=g-import-not-at-top
  if sys.argv[1] == 'pack':
    pack_full(sys.argv[2], sys.argv[3])
  else:
    write_cifar_folder(pathlib.Path(sys.argv[3]), sys.argv[2])
