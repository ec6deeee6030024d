"""scripts/devdata.py: the full CIFAR-100 packed for a GPU machine (one NHWC npz) and written back
in the official layout reads back identical, labels and class names included."""

import numpy as np

from jax_cifar.data import cifar100

from conftest import load_script

devdata = load_script('devdata')


def test_pack_then_write_round_trips_the_real_cifar100(cifar_dir, tmp_path):
  npz = tmp_path / 'full.npz'
  devdata.pack_full(str(cifar_dir), str(npz))
  packed = np.load(npz)
  assert packed['train_x'].shape == (50_000, 32, 32, 3) and packed['train_x'].dtype == np.uint8
  assert packed['test_x'].shape == (10_000, 32, 32, 3)
  devdata.write_cifar_folder(tmp_path / 'out', str(npz))
  for name in ('train', 'test', 'meta'):
    original = cifar100.read_pickle(cifar_dir / 'cifar-100-python' / name)
    written = cifar100.read_pickle(tmp_path / 'out' / 'cifar-100-python' / name)
    keys = ({'data', 'fine_labels', 'coarse_labels'} if name != 'meta'
            else {'fine_label_names', 'coarse_label_names'})
    assert keys <= set(written), (name, set(written))
    for key in keys:
      assert np.array_equal(np.asarray(original[key]), np.asarray(written[key])), (name, key)
  # And the trainer's reader sees the same split.
  a = cifar100.load_split(cifar_dir, 'test', download=False)
  b = cifar100.load_split(tmp_path / 'out', 'test', download=False)
  assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
  assert np.array_equal(a.coarse_labels, b.coarse_labels)
