"""Transfer learning through the trainer: converted backbone, fresh torch-style head, frozen warm-up."""

import math
import os
import pathlib
from typing import Any, Mapping

import jax
import numpy as np
import pytest
from flax import nnx

import jax_cifar
from jax_cifar.configs import resnet50_transfer
from jax_cifar import config_validation, convert, optim, parallel
from jax_cifar.training import start, trainer
from jax_cifar import state as state_lib
from conftest import require_env_path

WEIGHTS_FILE = 'resnet50-keras-imagenet-tvlayout-fp16.pth'
pytestmark = pytest.mark.large_programs  # ResNet-50 train steps (tests/conftest.py).


def _flat(tree: Mapping, prefix: str = '') -> dict[str, np.ndarray]:
  """{dotted key: numpy} of a pure-dict / nnx.State tree (the keys read_converted uses)."""
  out = {}
  for k, v in tree.items():
    key = f'{prefix}{k}'
    if isinstance(v, Mapping):
      out.update(_flat(v, key + '.'))
    else:
      out[key] = np.asarray(jax.device_get(v))
  return out


def _params(state) -> dict[str, np.ndarray]:
  return _flat(nnx.to_pure_dict(state.params))


@pytest.fixture(scope='module')
def converted(tmp_path_factory) -> tuple[str, dict[str, np.ndarray]]:
  """The real shared ResNet-50, converted once: (checkpoint path, {dotted key: array})."""
  pth = require_env_path('JAX_CIFAR_WEIGHTS_DIR', WEIGHTS_FILE)
  torch = pytest.importorskip('torch') if not os.environ.get('CI') else __import__('torch')
  sd = torch.load(str(pth), map_location='cpu', weights_only=True)
  path = str(tmp_path_factory.mktemp('weights') / 'resnet50')
  convert.save_converted(convert.torch_to_flax(sd, 'resnet50'), 'resnet50', path, source=str(pth))
  return path, convert.read_converted(path)[1]


def _config(pretrained: str, **optim_overrides: Any):
  """resnet50_transfer on tiny synthetic data at 32x32: a couple of steps take seconds."""
  c = resnet50_transfer.get_config()
  c.model.pretrained = pretrained
  c.model.image_size = 32
  c.data.source = 'synthetic'
  c.data.synthetic_size = 64
  c.data.val_fraction = 0.0  # One image per class, none to hold out: validated on synthetic test.
  c.train.batch_size = 4
  c.train.eval_batch_size = 16
  c.train.num_epochs = 1
  c.train.max_steps = 2
  c.train.log_every_steps = 1
  c.optim.warmup_epochs = 0.0  # The head moves from the first step.
  for k, v in optim_overrides.items():
    setattr(c.optim, k, v)
  return c


def _assert_backbone_equals(params: dict, ckpt: dict) -> None:
  backbone = [k for k in params if not k.startswith('fc.')]
  assert len(backbone) == 53 + 2 * 53  # ResNet-50: 53 conv kernels, 53 BN scales and biases.
  for k in backbone:
    np.testing.assert_array_equal(params[k], ckpt[k], err_msg=k)


def test_config_is_valid_and_set_up_for_imagenet_weights():
  c = resnet50_transfer.get_config()
  config_validation.validate(c)
  assert (c.model.name, c.model.stem, c.model.normalize) == ('resnet50', 'imagenet', 'imagenet')
  assert c.optim.backbone_lr_mult < 1 and c.optim.label_smoothing == 0.1
  assert c.augment.crop_padding > 0 and c.augment.flip


def test_pretrained_state_has_converted_backbone_and_fresh_torch_style_head(converted, capsys):
  path, ckpt = converted
  c = _config(path)
  tx, _ = optim.make_optimizer(c.optim, total_steps=10, steps_per_epoch=10)
  state, _ = state_lib.init_state(c, tx, parallel.make_mesh())
  # Said (nothing had told that the weights were used): 53 convolutions, 53 x 4 BatchNorm arrays.
  assert (f'Loaded the pretrained weights of {path}: 265 backbone arrays, a fresh 100-class head'
          in capsys.readouterr().err.splitlines())
  params = _params(state)
  _assert_backbone_equals(params, ckpt)
  batch_stats = _flat(nnx.to_pure_dict(state.batch_stats))
  for k, v in batch_stats.items():  # Running statistics come from ImageNet too.
    np.testing.assert_array_equal(v, ckpt[k], err_msg=k)
  kernel, bias = params['fc.kernel'], params['fc.bias']
  assert kernel.shape == (2048, 100) and bias.shape == (100,)
  bound = 1 / math.sqrt(2048)  # torch.nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for both.
  for w in (kernel, bias):
    assert np.abs(w).max() <= bound
  # Uniform over the whole interval (std bound/sqrt(3)), not zeros or a narrow normal.
  assert abs(kernel.std() - bound / math.sqrt(3)) < 0.02 * bound
  assert np.abs(kernel).max() > 0.99 * bound


def test_create_model_loads_a_converted_folder_given_as_pretrained(converted, capsys):
  """timm's create_model(name, pretrained=...) habit, with the converted folder as the weights:
  the same model as building it and calling load_pretrained; it says whether the head came with
  the weights, as the trainer does (load_pretrained's report had been thrown away: a review)."""
  path, ckpt = converted
  model = jax_cifar.create_model('resnet50', 100, pretrained=pathlib.Path(path), rngs=nnx.Rngs(0))
  assert capsys.readouterr().err == (f'Loaded the pretrained weights of {path}: 265 backbone '
                                     'arrays, a fresh 100-class head\n')
  jax_cifar.create_model('resnet50', 0, pretrained=path)
  assert capsys.readouterr().err.endswith('265 backbone arrays, no head (the model has none)\n')
  _assert_backbone_equals(_flat(nnx.to_pure_dict(nnx.state(model, nnx.Param))), ckpt)
  by_hand = jax_cifar.create_model('resnet50', 100, rngs=nnx.Rngs(0))
  assert convert.load_pretrained(by_hand, path)['head'] == 'fresh'
  for (key, a), (_, b) in zip(_flat(nnx.to_pure_dict(nnx.state(model))).items(),
                              _flat(nnx.to_pure_dict(nnx.state(by_hand))).items()):
    np.testing.assert_array_equal(a, b, err_msg=key)  # The fresh head too (same rngs).
  with pytest.raises(convert.ConversionError, match="holds arch 'resnet50'"):
    jax_cifar.create_model('resnet18', pretrained=path, rngs=nnx.Rngs(0))
  for flag in (True, 1):  # timm's habit: nothing is downloaded, the message says what to give.
    with pytest.raises(TypeError, match=rf'pretrained={flag}\): give the folder of ImageNet weights '
                                        r'converted .*python -m jax_cifar.convert.*load_pretrained'):
      jax_cifar.create_model('resnet18', pretrained=flag, rngs=nnx.Rngs(0))


def test_frozen_backbone_stays_fixed_while_the_head_trains(converted, tmp_path):
  path, ckpt = converted
  c = _config(path, freeze_backbone_steps=2)
  tx, _ = optim.make_optimizer(c.optim, total_steps=10, steps_per_epoch=10)
  initial = _params(state_lib.init_state(c, tx, parallel.make_mesh())[0])
  trainer.train_and_evaluate(c, str(tmp_path))
  state, _, step = state_lib.restore(c, str(tmp_path), 'latest', parallel.make_mesh())
  assert step == 2
  params = _params(state)
  _assert_backbone_equals(params, ckpt)  # Bitwise: a zero learning rate adds exactly zero.
  for k in ('fc.kernel', 'fc.bias'):
    assert np.abs(params[k] - initial[k]).max() > 1e-5, f'{k} did not train'
  # BatchNorm running statistics are not frozen (train-mode forward passes update them).
  stats = _flat(nnx.to_pure_dict(state.batch_stats))
  assert any(not np.array_equal(v, ckpt[k]) for k, v in stats.items())


def test_checkpoint_of_another_arch_is_rejected_naming_both(tmp_path):
  params, stats = convert.abstract_variables('resnet18', 1000)
  merged = nnx.merge_state(params, stats)  # A complete (zero-valued) resnet18 checkpoint.
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), nnx.to_pure_dict(merged))
  path = str(tmp_path / 'r18')
  convert.save_converted(zeros, 'resnet18', path)
  with pytest.raises(ValueError,
                     match=r"^model.pretrained: .*holds arch 'resnet18', model is 'resnet50'"):
    trainer.train_and_evaluate(_config(path), str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()  # Refused before the run's folder was made.


def test_a_torchvision_pth_or_missing_path_is_named_before_the_run_starts(tmp_path):
  pth = tmp_path / 'resnet50.pth'
  pth.write_bytes(b'not read')
  with pytest.raises(convert.ConversionError,
                     match='^model.pretrained: .*not a converted checkpoint .*converted first, '
                     'with python -m jax_cifar.convert'):
    trainer.train_and_evaluate(_config(str(pth)), str(tmp_path / 'run'))
  with pytest.raises(convert.ConversionError,
                     match='^model.pretrained: .*no such converted checkpoint'):
    trainer.train_and_evaluate(_config(str(tmp_path / 'nope')), str(tmp_path / 'run'))
  # timm's and torchvision's habit, pretrained=True, said only that 'True' does not exist.
  with pytest.raises(convert.ConversionError, match="^model.pretrained: True: no such converted "
                     "checkpoint \\(it is the folder of converted weights, not a switch .*"
                     "python -m jax_cifar.convert --arch ARCH"):
    trainer.train_and_evaluate(_config('True'), str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_a_transfer_config_without_weights_warns_that_its_backbone_is_random(tmp_path, caplog):
  """resnet50_transfer without model.pretrained said it "trains from scratch", but trained the
  random backbone at a tenth of the head's rate and kept it frozen at first, silently (an audit)."""
  c = _config('', freeze_backbone_steps=3)
  note = start.random_backbone_note(c, resume_step=0)
  assert 'random weights' in note and 'backbone_lr_mult=0.1 x' in note, note
  assert f'frozen for the first {c.optim.freeze_backbone_steps} steps' in note, note
  assert start.random_backbone_note(c, resume_step=5) is None
  for change in ({'model.pretrained': 'weights/r50'}, {'model.init_from': 'runs/a'},
                 {'optim.backbone_lr_mult': 1.0, 'optim.freeze_backbone_steps': 0}):
    other = _config('')
    other.update_from_flattened_dict(change)
    assert start.random_backbone_note(other, resume_step=0) is None, change
  # The run says it, with the same config at the smallest size.
  c = _config('')
  c.model.name, c.model.stem, c.model.width, c.train.max_steps = 'resnet18', 'cifar', 4, 1
  with caplog.at_level('WARNING'):
    trainer.train_and_evaluate(c, str(tmp_path / 'run'))
  assert any('The backbone starts from random weights' in r.getMessage() for r in caplog.records)
