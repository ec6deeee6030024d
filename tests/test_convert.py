"""torchvision -> Flax conversion: logits and BN updates match real torch; errors name keys."""

import copy
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

from conftest import load_script, require_env_path, require_module

from jax_cifar.convert import load_pretrained, save_converted, torch_to_flax
from jax_cifar.models import create_model
from jax_cifar.models.resnet import torch_linear

ARCHS = ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152')
# Grouped (ResNeXt) and wide bottlenecks: parity at one small size keeps the 101s affordable.
WIDE_ARCHS = ('resnext50_32x4d', 'resnext101_32x8d', 'resnext101_64x4d', 'wide_resnet50_2',
              'wide_resnet101_2')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


torch = require_module('torch')
torchvision = require_module('torchvision')


def _random_torch_resnet(arch: str, seed: int = 0):
  """torchvision model with random weights and randomised BN affine params and running stats."""
  torch.manual_seed(seed)
  model = getattr(torchvision.models, arch)()
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.0)
        m.bias.uniform_(-0.2, 0.2)
        m.running_mean.uniform_(-0.2, 0.2)
        m.running_var.uniform_(0.5, 2.0)
  return model


def _flax_model(arch: str, pure: dict, num_classes: int = 1000, **kw) -> nnx.Module:
  """A model holding `pure` exactly (no random init, so no init cost)."""
  abstract = nnx.eval_shape(lambda: create_model(arch, num_classes, rngs=nnx.Rngs(0), **kw))
  graphdef, state = nnx.split(abstract)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pure))
  return nnx.merge(graphdef, state)


def _nchw(x: np.ndarray):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _rel_diff(ours, ref) -> tuple[float, float]:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  err = float(np.abs(ours - ref).max())
  return err, err / max(float(np.abs(ref).max()), 1e-12)


@pytest.fixture(scope='module', params=ARCHS)
def converted(request):
  arch = request.param
  model = _random_torch_resnet(arch).eval()
  return arch, model, torch_to_flax(model.state_dict(), arch)


def test_eval_logits_match_torch_at_224_and_32(converted):
  arch, tmodel, pure = converted
  model = _flax_model(arch, pure)
  rng = np.random.default_rng(0)
  for size, batch in ((224, 1), (32, 2)):
    x = rng.standard_normal((batch, size, size, 3), dtype=np.float32)
    with torch.no_grad():
      ref = tmodel.eval()(_nchw(x)).numpy()
    with jax.default_matmul_precision('float32'):
      ours = model(jnp.asarray(x), train=False)
    err, rel = _rel_diff(ours, ref)
    print(f'\n[eval] {arch} {size}x{size}: max|diff|={err:.3g} max|logit|={np.abs(ref).max():.3g} '
          f'rel={rel:.2g}')
    assert rel < 1e-4, (arch, size, err, rel)
    assert (np.argmax(ours, -1) == np.argmax(ref, -1)).all()


def _leaf_errors(ours: dict, ref: dict) -> float:
  """Worst max-abs difference over matching leaves, each relative to its leaf's scale."""
  worst = 0.0
  for path, value in jax.tree_util.tree_flatten_with_path(ours)[0]:
    ref_v = ref
    for p in path:
      ref_v = ref_v[p.key]
    worst = max(worst, _rel_diff(value, ref_v)[1])
  return worst


def test_train_forward_matches_torch_outputs_and_running_stats(converted):
  _assert_train_forward_matches_torch(*converted)


def _assert_train_forward_matches_torch(arch: str, tmodel, pure: dict, **model_kw) -> None:
  """Batch statistics amplify rounding in deep nets, so torch float64 is the reference and
  torch's own float32 error against it sets the bar (biased running variance would miss it)."""
  model = _flax_model(arch, pure, **model_kw)
  t32, t64 = copy.deepcopy(tmodel).train(), copy.deepcopy(tmodel).double().train()
  x = np.random.default_rng(1).standard_normal((2, 64, 64, 3), dtype=np.float32)
  with torch.no_grad():
    ref32, ref64 = t32(_nchw(x)).numpy(), t64(_nchw(x).double()).numpy()
  with jax.default_matmul_precision('float32'):
    ours = model(jnp.asarray(x), train=True)
  err, rel = _rel_diff(ours, ref64)
  err32, rel32 = _rel_diff(ref32, ref64)
  print(f'\n[train] {arch} 64x64 logits vs torch fp64: ours rel={rel:.2g} (abs {err:.3g}), '
        f'torch fp32 rel={rel32:.2g}; ours vs torch fp32 rel={_rel_diff(ours, ref32)[1]:.2g}')
  assert rel <= 2 * rel32 + 1e-5, (arch, rel, rel32)

  # Running stats in the model's own layout, via the converter.
  stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
  stats32, stats64 = (torch_to_flax(t.state_dict(), arch) for t in (t32, t64))
  rel, rel32 = _leaf_errors(stats, stats64), _leaf_errors(stats32, stats64)
  moved = _leaf_errors(stats64, pure)  # how far the update moved the stats
  print(f'[train] {arch} running stats vs torch fp64: ours worst rel={rel:.2g}, torch fp32 '
        f'{rel32:.2g}; ours vs torch fp32 {_leaf_errors(stats, stats32):.2g} '
        f'(update size {moved:.2g})')
  assert moved > 1e-3 and rel <= 2 * rel32 + 1e-6, (arch, rel, rel32, moved)


@pytest.mark.parametrize('converted', ['resnet34', 'resnet50'], indirect=True)
def test_scanned_blocks_keep_torch_parity_in_eval_and_train(converted):
  """model.scan_blocks runs the same converted weights: torch's logits and running stats (basic
  and bottleneck blocks; deeper stages only scan more copies of the same block: test_scan_blocks)."""
  arch, tmodel, pure = converted
  x = np.random.default_rng(0).standard_normal((2, 32, 32, 3), dtype=np.float32)
  with torch.no_grad():
    ref = tmodel.eval()(_nchw(x)).numpy()
  with jax.default_matmul_precision('float32'):
    ours = _flax_model(arch, pure, scan_blocks=True)(jnp.asarray(x), train=False)
  assert _rel_diff(ours, ref)[1] < 1e-4
  _assert_train_forward_matches_torch(arch, tmodel, pure, scan_blocks=True)


@pytest.fixture(scope='module', params=WIDE_ARCHS)
def converted_wide(request):
  arch = request.param
  model = _random_torch_resnet(arch).eval()
  return arch, model, torch_to_flax(model.state_dict(), arch)


def test_resnext_and_wide_resnet_eval_logits_match_torch(converted_wide):
  """36 px (odd sizes after each stride 2) exercises torch's symmetric padding at every stage."""
  arch, tmodel, pure = converted_wide
  model = _flax_model(arch, pure)
  x = np.random.default_rng(0).standard_normal((2, 36, 36, 3), dtype=np.float32)
  with torch.no_grad():
    ref = tmodel.eval()(_nchw(x)).numpy()
  with jax.default_matmul_precision('float32'):
    ours = model(jnp.asarray(x), train=False)
  err, rel = _rel_diff(ours, ref)
  print(f'\n[eval] {arch} 36x36: max|diff|={err:.3g} max|logit|={np.abs(ref).max():.3g} '
        f'rel={rel:.2g}')
  assert rel < 1e-4, (arch, err, rel)
  assert (np.argmax(ours, -1) == np.argmax(ref, -1)).all()


@pytest.mark.parametrize('converted_wide', ['resnext50_32x4d'], indirect=True)
def test_resnext_train_forward_matches_torch_outputs_and_running_stats(converted_wide):
  """One grouped net in train mode keeps the time down; its BN sees grouped convs' channels."""
  _assert_train_forward_matches_torch(*converted_wide)


def _small_state_dict():
  torch.manual_seed(0)
  return {k: v.clone() for k, v in torchvision.models.resnet18().state_dict().items()}


def test_missing_unexpected_and_misshaped_keys_are_named():
  sd = _small_state_dict()
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
                                       r'resnet34: convert it as resnet18; .*layer1\.2\.conv1\.weight'):
    torch_to_flax(sd, 'resnet34')  # a ResNet-18 has no third block in layer1
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
  sd = _small_state_dict()
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


@pytest.mark.parametrize('kind', ['sparse', 'meta (no data)', 'quantized', 'complex'])
def test_tensors_that_are_not_dense_real_weights_are_named(kind):
  """Each had given a torch traceback (sparse, meta, quantized) or converted silently, dropping
  the imaginary part (complex)."""
  sd = _small_state_dict()
  w = sd['conv1.weight']
  bad = {'sparse': lambda: w.to_sparse(), 'meta (no data)': lambda: w.to('meta'),
         'quantized': lambda: torch.quantize_per_tensor(w, 0.1, 0, torch.qint8),
         'complex': lambda: w.to(torch.complex64)}[kind]()
  with pytest.raises(ValueError, match=re.escape(f'conv1.weight: a {kind} tensor, expected a dense '
                                                 'real one')):
    torch_to_flax(dict(sd, **{'conv1.weight': bad}), 'resnet18')
  with pytest.raises(ValueError, match='conv1.weight: dtype <U1, expected real numbers'):
    torch_to_flax(dict(sd, **{'conv1.weight': np.full(w.shape, 'x')}), 'resnet18')


def test_a_head_with_no_classes_is_named_before_anything_is_written():
  sd = _small_state_dict()
  with pytest.raises(ValueError, match=r'fc\.weight \(0, 512\) has no classes'):
    torch_to_flax(dict(sd, **{'fc.weight': torch.zeros(0, 512), 'fc.bias': torch.zeros(0)}),
                  'resnet18')


def test_module_prefix_fp16_and_num_batches_tracked_are_accepted():
  sd = _small_state_dict()
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
  sd = _small_state_dict()
  ref = torch_to_flax(sd, 'resnet18')
  for prefix in ('_orig_mod.', 'module._orig_mod.', 'module.module.', 'model.'):
    ours = torch_to_flax({prefix + k: v for k, v in sd.items()}, 'resnet18')
    jax.tree.map(np.testing.assert_array_equal, ours, ref)


def test_another_architecture_or_a_headless_backbone_is_named_as_such():
  mobilenet = torchvision.models.mobilenet_v3_small().state_dict()
  with pytest.raises(ValueError, match=r'looks like another architecture: its keys start '
                                       r'classifier\.0\.bias'):
    torch_to_flax(mobilenet, 'resnet18')
  headless = {k: v for k, v in _small_state_dict().items() if not k.startswith('fc.')}
  with pytest.raises(ValueError, match=r'missing keys: fc\.weight \(.*a backbone saved without its '
                                       r'head.*\)$'):
    torch_to_flax(headless, 'resnet18')


def test_saved_backbone_loads_into_a_100_class_model_with_a_fresh_torch_style_head(tmp_path):
  pure = torch_to_flax(_small_state_dict(), 'resnet18')
  path = str(tmp_path / 'r18')
  save_converted(pure, 'resnet18', path, source='test')
  assert sorted(os.listdir(tmp_path)) == ['r18']  # no temp dirs left behind
  with pytest.raises(FileExistsError):
    save_converted(pure, 'resnet18', path)

  model = create_model('resnet18', 100, rngs=nnx.Rngs(1))
  fresh_head = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model.fc)))
  load_pretrained(model, path, num_classes=100, rngs_seed=7)
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

  same_head = _flax_model('resnet18', jax.tree.map(np.zeros_like, pure))
  load_pretrained(same_head, path, num_classes=1000)
  jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(nnx.state(same_head)), pure)


def test_a_model_without_a_head_gives_torchvisions_pooled_features(tmp_path):
  """create_model(arch, 0) + load_pretrained (no num_classes needed) == torchvision with
  fc = Identity, timm's way of asking a backbone for features."""
  tmodel = _random_torch_resnet('resnet18').eval()
  path = str(tmp_path / 'r18')
  save_converted(torch_to_flax(tmodel.state_dict(), 'resnet18'), 'resnet18', path)
  model = create_model('resnet18', 0, rngs=nnx.Rngs(0))
  load_pretrained(model, path)
  tmodel.fc = torch.nn.Identity()
  x = np.random.default_rng(1).standard_normal((2, 32, 32, 3), dtype=np.float32)
  with torch.no_grad():
    ref = tmodel(_nchw(x)).numpy()
  with jax.default_matmul_precision('float32'):
    ours = model(jnp.asarray(x), train=False)
  assert ours.shape == ref.shape == (2, model.num_features) == (2, 512)
  assert _rel_diff(ours, ref)[1] < 1e-4
  with pytest.raises(ValueError, match=r'num_classes=100 outputs: the model has no head \(built '):
    load_pretrained(model, path, num_classes=100)


def test_loading_into_another_arch_or_stem_names_the_problem(tmp_path):
  path = str(tmp_path / 'r18')
  save_converted(torch_to_flax(_small_state_dict(), 'resnet18'), 'resnet18', path)
  other = nnx.eval_shape(lambda: create_model('resnet34', 100, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match='resnet34'):
    load_pretrained(other, path, num_classes=100)
  cifar = nnx.eval_shape(lambda: create_model('resnet18', 100, stem='cifar', rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r'mis-shaped keys: conv1\.kernel'):
    load_pretrained(cifar, path, num_classes=100)
  with pytest.raises(ValueError, match='num_classes=10 '):
    load_pretrained(cifar, path, num_classes=10)


def test_convert_script_writes_a_loadable_checkpoint(tmp_path):
  sd_file = tmp_path / 'r18.pth'
  torch.save(_small_state_dict(), sd_file)
  script = os.path.join(REPO, 'scripts', 'convert_torchvision_weights.py')
  out = tmp_path / 'converted'
  run = subprocess.run([sys.executable, script, '--arch', 'resnet18', '--state_dict', str(sd_file),
                        '--output', str(out)], capture_output=True, text=True, cwd=REPO)
  assert run.returncode == 0, run.stderr
  model = _flax_model('resnet18', jax.tree.map(np.zeros_like,
                                               torch_to_flax(_small_state_dict(), 'resnet18')))
  load_pretrained(model, str(out), num_classes=1000)
  jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(nnx.state(model)),
               torch_to_flax(_small_state_dict(), 'resnet18'))
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
  torch.save(_small_state_dict(), good)
  evil = tmp_path / 'evil.pth'
  torch.save({'conv1.weight': _RunsCode(tmp_path / 'pwned')}, evil)
  out = tmp_path / 'out'
  cases = [(['--arch', 'resnet18', '--state_dict', str(tmp_path / 'nope.pth')], 'nope.pth'),
           (['--arch', 'resnet18', '--state_dict', str(tmp_path)], 'is a folder; give the .pth'),
           (['--arch', 'resnet34', '--state_dict', str(good)], 'layer1.2.conv1.weight'),
           (['--arch', 'resnet18', '--state_dict', str(evil)], 'not a PyTorch state_dict')]
  for argv, needle in cases:
    capsys.readouterr()
    assert script.main(argv + ['--output', str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith('error: ') and needle in err[-1], err
    assert not out.exists()
  assert not (tmp_path / 'pwned').exists(), 'torch.load must not execute pickled code'


# ------------------------------------------------------------------ real ImageNet weights
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _imagenet_input(image: np.ndarray) -> np.ndarray:
  """Shorter side 256, center crop 224, ImageNet normalisation (torchvision's eval transform)."""
  from skimage.transform import resize
  h, w = image.shape[:2]
  scale = 256 / min(h, w)
  image = resize(image, (round(h * scale), round(w * scale)), order=1, anti_aliasing=True)
  h, w = image.shape[:2]
  top, left = (h - 224) // 2, (w - 224) // 2
  image = image[top:top + 224, left:left + 224].astype(np.float32)
  return (image - IMAGENET_MEAN) / IMAGENET_STD


def test_real_resnet50_weights_give_torchs_top1_on_photos():
  pth = require_env_path('JAX_CIFAR_WEIGHTS_DIR', 'resnet50-keras-imagenet-tvlayout-fp16.pth')
  from skimage import data
  sd = torch.load(pth, weights_only=True)
  tmodel = torchvision.models.resnet50()
  tmodel.load_state_dict(sd)
  tmodel.eval()
  model = _flax_model('resnet50', torch_to_flax(sd, 'resnet50'))
  x = np.stack([_imagenet_input(data.chelsea()), _imagenet_input(data.coffee())])
  with torch.no_grad():
    ref = tmodel(_nchw(x)).numpy()
  with jax.default_matmul_precision('float32'):
    ours = np.asarray(model(jnp.asarray(x), train=False))
  err, rel = _rel_diff(ours, ref)
  probs = jax.nn.softmax(ours, -1)
  top1 = ours.argmax(-1)
  print(f'\n[real] top-1 {top1.tolist()} probs {[round(float(p), 3) for p in probs.max(-1)]} '
        f'torch top-1 {ref.argmax(-1).tolist()} max|diff|={err:.3g} rel={rel:.2g}')
  np.testing.assert_array_equal(top1, ref.argmax(-1))
  assert top1[0] in range(281, 286), top1  # chelsea: a cat
  assert top1[1] in (967, 968), top1  # coffee: espresso / cup
  assert rel < 1e-4, (err, rel)
