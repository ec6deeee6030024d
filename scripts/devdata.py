"""The GPU checks' small real data set (.devdata/cifar_small.npz, from gpu_prepare.sh) written in
the official cifar-100-python layout, which the trainer and jax_cifar.corrupt read."""

import pathlib
import pickle

import numpy as np


def write_cifar_folder(parent: pathlib.Path, npz: str = '.devdata/cifar_small.npz') -> dict:
  """Writes PARENT/cifar-100-python/{train,test,meta}; returns the npz's arrays."""
  data = dict(np.load(npz))
  folder = pathlib.Path(parent) / 'cifar-100-python'
  folder.mkdir(parents=True, exist_ok=True)
  for split in ('train', 'test'):
    x, y = data[f'{split}_x'], data[f'{split}_y']
    with open(folder / split, 'wb') as f:
      pickle.dump({'data': x.transpose(0, 3, 1, 2).reshape(len(x), 3072),
                   'fine_labels': [int(v) for v in y]}, f, protocol=2)
  with open(folder / 'meta', 'wb') as f:
    pickle.dump({'fine_label_names': [f'c{i}' for i in range(100)],
                 'coarse_label_names': [f'k{i}' for i in range(20)]}, f, protocol=2)
  return data
