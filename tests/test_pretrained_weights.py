"""torchvision state_dicts into jax-cifar: what is refused and named (keys, shapes, tensors,
another architecture), saving and loading converted weights (new heads, no head), and the
convert script."""

import os
import re
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import load_script
from _torch_resnets import (flax_model, nchw, random_torch_resnet, rel_diff, small_state_dict,
                            torch, torchvision)
from jax_cifar.convert import load_pretrained, read_converted, save_converted, torch_to_flax
from jax_cifar.convert import _dotted, _flatten, _unflatten  # pylint: disable=protected-access
from jax_cifar.models import create_model
from jax_cifar.models.torch_init import torch_linear

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_missing_unexpected_and_misshaped_keys_are_named():
  sd = small_state_dict()
  broken = dict(sd)
  del broken['layer2.1.bn2.running_var']
  with pytest.raises(ValueError, match=r'missing keys: layer2\.1\.bn2\.running_var'):
    torch_to_flax(broken, 'resnet18')
  broken = dict(sd, **{'layer5.0.conv1.weight': torch.zeros(3)})
  with pytest.raises(ValueError, match=r'unexpected keys: layer5\.0\.conv1\.weight'):
    torch_to_flax(broken, 'resnet18')
  broken = dict(sd, **{'layer3.0.conv2.weight': torch.zeros(256, 256, 1, 1)})
  with pytest.raises(ValueError, match=r'mis-shaped keys: layer3\.0\.conv2\.weight'):
    torch_to_flax(broken, 'resnet18')
  with pytest.raises(ValueError, match=r'^this state_dict is a torchvision resnet18 .*, not a '
                                       r'resnet34: convert it as resnet18; .*missing keys: layer1\.2\.'):
    torch_to_flax(sd, 'resnet34')  # a ResNet-18 has no third block in layer1
  with pytest.raises(ValueError) as e:  # Named, then a few keys of each kind, not 36 of them.
    torch_to_flax(random_torch_resnet('resnet50').state_dict(), 'resnet18')
  assert str(e.value).startswith('this state_dict is a torchvision resnet50 ') and len(
      str(e.value)) < 900, (len(str(e.value)), str(e.value))
  with pytest.raises(ValueError, match='resnet152'):
    torch_to_flax(sd, 'resnet19')
  cifar_stem = dict(sd, **{'conv1.weight': torch.zeros(64, 3, 3, 3)})  # The usual student edit.
  with pytest.raises(ValueError, match=r'its conv1 is 3x3: a CIFAR stem.*mis-shaped keys: conv1'):
    torch_to_flax(cifar_stem, 'resnet18')


def test_the_architecture_of_a_state_dict_is_recognised_from_its_blocks_and_shapes():
  """Every architecture's keys and torch-layout shapes (stand-ins: no weights are made) give back
  its name; a file given as another architecture is named as what it is (an audit: a ResNet-50
  file converted as resnet18 had listed 150 keys and never said resnet50)."""
  from jax_cifar import convert  # pylint: disable=g-import-not-at-top
  for arch in convert.ARCHS:
    params, stats = convert.abstract_variables(arch, 10)
    sd = {}
    for path, spec in [*convert._flatten(nnx.to_pure_dict(params)),  # pylint: disable=protected-access
                       *convert._flatten(nnx.to_pure_dict(stats))]:  # pylint: disable=protected-access
      shape = tuple(spec.shape)
      shape = (shape[3], shape[2], *shape[:2]) if len(shape) == 4 else shape[::-1]  # HWIO -> OIHW
      sd[convert.torch_key(path)] = types.SimpleNamespace(shape=shape)
    assert convert.guess_arch(sd) == arch
    if arch == 'resnet50':  # Pruned: conv2 with fewer outputs than inputs (a ZeroDivisionError).
      pruned = {**sd, 'layer1.0.conv2.weight': types.SimpleNamespace(shape=(32, 64, 3, 3))}
      assert convert.guess_arch(pruned) is None
  assert convert.guess_arch({'conv1.weight': np.zeros(1)}) is None  # No blocks: no guess.


def test_non_finite_weights_negative_running_variances_and_a_0d_head_are_named():
  sd = small_state_dict()
  conv = sd['conv1.weight'].clone()
  conv[0, 0, 0, 0] = float('nan')
  var = sd['layer2.0.bn1.running_var'].clone()
  var[3] = float('inf')
  with pytest.raises(ValueError, match=r'non-finite .*: conv1\.weight, layer2\.0\.bn1\.running_var$'):
    torch_to_flax(dict(sd, **{'conv1.weight': conv, 'layer2.0.bn1.running_var': var}), 'resnet18')
  var[3] = -0.5
  with pytest.raises(ValueError, match=r'negative running variances in: layer2\.0\.bn1\.running_var'):
    torch_to_flax(dict(sd, **{'layer2.0.bn1.running_var': var}), 'resnet18')
  with pytest.raises(ValueError, match=r'mis-shaped keys: fc\.weight \(\)'):
    torch_to_flax(dict(sd, **{'fc.weight': torch.tensor(1.0)}), 'resnet18')
  bias = sd['layer1.0.bn1.bias'].clone()
  bias[0] = -3.0  # Negative values elsewhere are normal weights.
  torch_to_flax(dict(sd, **{'layer1.0.bn1.bias': bias}), 'resnet18')


# torch 2.14 deprecates making quantized tensors (a UserWarning); users may still hand one in.
@pytest.mark.filterwarnings('ignore:torch.quantize_per_tensor:UserWarning')
@pytest.mark.parametrize('kind', ['sparse', 'meta (no data)', 'quantized', 'complex'])
def test_tensors_that_are_not_dense_real_weights_are_named(kind):
  """Each had given a torch traceback (sparse, meta, quantized) or converted silently, dropping
  the imaginary part (complex)."""
  sd = small_state_dict()
  w = sd['conv1.weight']
  bad = {'sparse': lambda: w.to_sparse(), 'meta (no data)': lambda: w.to('meta'),
         'quantized': lambda: torch.quantize_per_tensor(w, 0.1, 0, torch.qint8),
         'complex': lambda: w.to(torch.complex64)}[kind]()
  with pytest.raises(ValueError, match=re.escape(f'conv1.weight: a {kind} tensor, expected a dense '
                                                 'real one')):
    torch_to_flax(dict(sd, **{'conv1.weight': bad}), 'resnet18')
  with pytest.raises(ValueError, match='conv1.weight: dtype <U1, expected real numbers'):
    torch_to_flax(dict(sd, **{'conv1.weight': np.full(w.shape, 'x')}), 'resnet18')


@pytest.mark.parametrize('as_torch', [True, False])
def test_weights_cast_to_integers_are_refused(as_torch):
  """A state_dict cast to int32 converted with almost every weight 0 (a bad-input review)."""
  sd = small_state_dict()
  cast = sd['layer1.0.conv1.weight'].to(torch.int32)
  with pytest.raises(ValueError, match=r'layer1\.0\.conv1\.weight: dtype int32, expected '
                                       r'floating-point weights \(a cast to integers'):
    torch_to_flax(dict(sd, **{'layer1.0.conv1.weight': cast if as_torch else cast.numpy()}),
                  'resnet18')


def test_a_head_with_no_classes_is_named_before_anything_is_written():
  sd = small_state_dict()
  with pytest.raises(ValueError, match=r'fc\.weight \(0, 512\) has no classes'):
    torch_to_flax(dict(sd, **{'fc.weight': torch.zeros(0, 512), 'fc.bias': torch.zeros(0)}),
                  'resnet18')


def test_module_prefix_fp16_and_num_batches_tracked_are_accepted():
  sd = small_state_dict()
  assert any(k.endswith('num_batches_tracked') for k in sd)
  half = {f'module.{k}': (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
  ours = torch_to_flax(half, 'resnet18')
  ref = torch_to_flax({k: v.half().float() if v.is_floating_point() else v
                       for k, v in sd.items()}, 'resnet18')
  jax.tree.map(np.testing.assert_array_equal, ours, ref)
  assert all(v.dtype == np.float32 for v in jax.tree.leaves(ours))
  numpy_sd = {k: v.numpy() for k, v in sd.items()}
  jax.tree.map(np.testing.assert_array_equal, torch_to_flax(numpy_sd, 'resnet18'),
               torch_to_flax(sd, 'resnet18'))


def test_compile_and_nested_wrapper_prefixes_and_a_lightning_model_attribute_are_accepted():
  """torch.compile's '_orig_mod.', DDP around it, and a LightningModule's 'model.' had all been
  reported as only "missing keys: fc.weight" (an audit)."""
  sd = small_state_dict()
  ref = torch_to_flax(sd, 'resnet18')
  for prefix in ('_orig_mod.', 'module._orig_mod.', 'module.module.', 'model.'):
    ours = torch_to_flax({prefix + k: v for k, v in sd.items()}, 'resnet18')
    jax.tree.map(np.testing.assert_array_equal, ours, ref)


def test_another_architecture_or_a_headless_backbone_is_named_as_such():
  mobilenet = torchvision.models.mobilenet_v3_small().state_dict()
  with pytest.raises(ValueError, match=r'looks like another architecture: its keys start '
                                       r'classifier\.0\.bias'):
    torch_to_flax(mobilenet, 'resnet18')
  headless = {k: v for k, v in small_state_dict().items() if not k.startswith('fc.')}
  with pytest.raises(ValueError, match=r'missing keys: fc\.weight \(.*a backbone saved without its '
                                       r'head.*\)$'):
    torch_to_flax(headless, 'resnet18')


def test_saved_backbone_loads_into_a_100_class_model_with_a_fresh_torch_style_head(tmp_path):
  pure = torch_to_flax(small_state_dict(), 'resnet18')
  path = str(tmp_path / 'r18')
  save_converted(pure, 'resnet18', path, source='test')
  assert sorted(os.listdir(tmp_path)) == ['r18']  # no temp dirs left behind
  with pytest.raises(FileExistsError):
    save_converted(pure, 'resnet18', path)

  model = create_model('resnet18', 100, rngs=nnx.Rngs(1))
  fresh_head = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model.fc)))
  backbone = sum(not k.startswith('fc.') for k in read_converted(path)[1])
  assert load_pretrained(model, path, num_classes=100, rngs_seed=7) == {'arrays': backbone,
                                                                        'head': 'fresh'}
  loaded = nnx.to_pure_dict(nnx.state(model))
  head = loaded.pop('fc')
  expected = dict(pure)
  expected.pop('fc')
  jax.tree.map(np.testing.assert_array_equal, loaded, expected)
  jax.tree.map(np.testing.assert_array_equal, head, fresh_head)  # the model's own new head
  assert np.abs(head['kernel']).max() <= 1 / np.sqrt(512)

  abstract = nnx.eval_shape(lambda: create_model('resnet18', 100, rngs=nnx.Rngs(1)))
  load_pretrained(abstract, path, num_classes=100, rngs_seed=7)  # no values: drawn from the seed
  drawn = nnx.to_pure_dict(nnx.state(torch_linear(512, 100, dtype=jnp.float32, rngs=nnx.Rngs(7))))
  jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(nnx.state(abstract.fc)), drawn)

  same_head = flax_model('resnet18', jax.tree.map(np.zeros_like, pure))
  assert load_pretrained(same_head, path, num_classes=1000) == {'arrays': backbone,
                                                                 'head': 'loaded'}
  jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(nnx.state(same_head)), pure)


def test_a_model_without_a_head_gives_torchvisions_pooled_features(tmp_path):
  """create_model(arch, 0) + load_pretrained (no num_classes needed) == torchvision with
  fc = Identity, timm's way of asking a backbone for features."""
  tmodel = random_torch_resnet('resnet18').eval()
  path = str(tmp_path / 'r18')
  save_converted(torch_to_flax(tmodel.state_dict(), 'resnet18'), 'resnet18', path)
  model = create_model('resnet18', 0, rngs=nnx.Rngs(0))
  assert load_pretrained(model, path)['head'] == 'none'
  tmodel.fc = torch.nn.Identity()
  x = np.random.default_rng(1).standard_normal((2, 32, 32, 3), dtype=np.float32)
  with torch.no_grad():
    ref = tmodel(nchw(x)).numpy()
  with jax.default_matmul_precision('float32'):
    ours = model(jnp.asarray(x), train=False)
  assert ours.shape == ref.shape == (2, model.num_features) == (2, 512)
  assert rel_diff(ours, ref)[1] < 1e-4
  with pytest.raises(ValueError, match=r'num_classes=100 outputs: the model has no head \(built '):
    load_pretrained(model, path, num_classes=100)


def test_loading_into_another_arch_or_stem_names_the_problem(tmp_path):
  path = str(tmp_path / 'r18')
  save_converted(torch_to_flax(small_state_dict(), 'resnet18'), 'resnet18', path)
  other = nnx.eval_shape(lambda: create_model('resnet34', 100, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match='resnet34'):
    load_pretrained(other, path, num_classes=100)
  cifar = nnx.eval_shape(lambda: create_model('resnet18', 100, stem='cifar', rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r"conv1 is 7x7 and the model's 3x3: build the model with "
                     r"stem='imagenet'\): mis-shaped keys: conv1\.kernel"):
    load_pretrained(cifar, path, num_classes=100)
  # Another width: named as the cause, not only as every mis-shaped key (a new-user audit).
  narrow = nnx.eval_shape(lambda: create_model('resnet18', 100, width=32, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r"conv1 has 64 output channels and the model's 32: build "
                     r'the model with width=64\): mis-shaped keys: .*conv1\.kernel'):
    load_pretrained(narrow, path, num_classes=100)
  with pytest.raises(ValueError, match='num_classes=10 '):
    load_pretrained(cifar, path, num_classes=10)


def test_convert_script_writes_a_loadable_checkpoint(tmp_path):
  sd_file = tmp_path / 'r18.pth'
  torch.save(small_state_dict(), sd_file)
  script = os.path.join(REPO, 'scripts', 'convert_torchvision_weights.py')
  out = tmp_path / 'converted'
  run = subprocess.run([sys.executable, script, '--arch', 'resnet18', '--state_dict', str(sd_file),
                        '--output', str(out)], capture_output=True, text=True, cwd=REPO)
  assert run.returncode == 0, run.stderr
  model = flax_model('resnet18', jax.tree.map(np.zeros_like,
                                               torch_to_flax(small_state_dict(), 'resnet18')))
  load_pretrained(model, str(out), num_classes=1000)
  jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(nnx.state(model)),
               torch_to_flax(small_state_dict(), 'resnet18'))
  assert 'converted to resnet18' in run.stderr  # logs each stage


class _RunsCode:
  """A pickle payload: unpickling it would create `marker`."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


def test_convert_script_rejects_bad_input_with_one_line_and_no_output(tmp_path, capsys):
  script = load_script('convert_torchvision_weights')
  good = tmp_path / 'r18.pth'
  torch.save(small_state_dict(), good)
  evil = tmp_path / 'evil.pth'
  torch.save({'conv1.weight': _RunsCode(tmp_path / 'pwned')}, evil)
  out = tmp_path / 'out'
  cases = [(['--arch', 'resnet18', '--state_dict', str(tmp_path / 'nope.pth')], 'nope.pth'),
           (['--arch', 'resnet18', '--state_dict', str(tmp_path)], 'is a folder; give the .pth'),
           (['--arch', 'resnet34', '--state_dict', str(good)],
            'convert it as resnet18; in detail, it does not match resnet34: missing keys: layer1.2.'),
           (['--arch', 'resnet18', '--state_dict', str(evil)], 'not a PyTorch state_dict')]
  for argv, needle in cases:
    capsys.readouterr()
    assert script.main(argv + ['--output', str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith('error: ') and needle in err[-1], err
    assert not out.exists()
  assert not (tmp_path / 'pwned').exists(), 'torch.load must not execute pickled code'


def test_a_converted_checkpoint_missing_a_backbone_variable_is_named(tmp_path):
  """One backbone variable missing from a converted checkpoint: an error naming it (not a bare
  KeyError from deep in the load)."""
  path = str(tmp_path / 'r18')
  pure = {p: v for p, v in _flatten(torch_to_flax(small_state_dict(), 'resnet18'))
          if _dotted(p) != 'layer2.1.bn2.var'}
  save_converted(_unflatten(pure), 'resnet18', path)
  model = nnx.eval_shape(lambda: create_model('resnet18', 100, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r'does not match the model: missing keys: layer2\.1\.bn2\.var$'):
    load_pretrained(model, path, num_classes=100)


@pytest.mark.parametrize('how, missing', [('state_dict', 'torch'),
                                          ('weights', 'torch and torchvision')])
def test_the_converter_without_torch_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch,
                                                                  how, missing):
  """torch and torchvision are the `convert` extra, not jax-cifar's own dependencies: without
  them the converter had ended in a ModuleNotFoundError traceback (a review)."""
  from importlib import util  # pylint: disable=import-outside-toplevel
  from jax_cifar import convert_cli  # pylint: disable=import-outside-toplevel
  find_spec = util.find_spec
  monkeypatch.setattr(util, 'find_spec', lambda name, *a: None if name in ('torch', 'torchvision')
                      else find_spec(name, *a))
  (tmp_path / 'r18.pth').write_bytes(b'PK\x03\x04')
  source = (['--state_dict', str(tmp_path / 'r18.pth')] if how == 'state_dict'
            else ['--weights', 'IMAGENET1K_V1'])
  capsys.readouterr()
  assert convert_cli.main(['--arch', 'resnet18', *source, '--output', str(tmp_path / 'w')]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(f'error: the converter needs {missing} to read the '
                                             'torch checkpoint'), err
  assert err[0].endswith("pip install 'jax-cifar[convert]' (in a source tree: pip install -e "
                         "'.[convert]')")
  assert not (tmp_path / 'w').exists()
