"""torchvision -> Flax conversion: logits and BatchNorm updates match real torch (random weights
for every architecture, and the real ImageNet ResNet-50)."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import require_env_path
from _torch_resnets import flax_model, nchw, random_torch_resnet, rel_diff, torch, torchvision
from jax_cifar.convert import torch_to_flax

ARCHS = ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152')
# Grouped (ResNeXt) and wide bottlenecks: parity at one small size keeps the 101s affordable.
WIDE_ARCHS = ('resnext50_32x4d', 'resnext101_32x8d', 'resnext101_64x4d', 'wide_resnet50_2',
              'wide_resnet101_2')


@pytest.fixture(scope='module', params=ARCHS)
def converted(request):
  arch = request.param
  model = random_torch_resnet(arch).eval()
  return arch, model, torch_to_flax(model.state_dict(), arch)


def test_eval_logits_match_torch_at_224_and_32(converted):
  arch, tmodel, pure = converted
  model = flax_model(arch, pure)
  rng = np.random.default_rng(0)
  for size, batch in ((224, 1), (32, 2)):
    x = rng.standard_normal((batch, size, size, 3), dtype=np.float32)
    with torch.no_grad():
      ref = tmodel.eval()(nchw(x)).numpy()
    with jax.default_matmul_precision('float32'):
      ours = model(jnp.asarray(x), train=False)
    err, rel = rel_diff(ours, ref)
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
    worst = max(worst, rel_diff(value, ref_v)[1])
  return worst


def test_train_forward_matches_torch_outputs_and_running_stats(converted):
  _assert_train_forward_matches_torch(*converted)


def _assert_train_forward_matches_torch(arch: str, tmodel, pure: dict, **model_kw) -> None:
  """Batch statistics amplify rounding in deep nets, so torch float64 is the reference and
  torch's own float32 error against it sets the bar (biased running variance would miss it)."""
  model = flax_model(arch, pure, **model_kw)
  t32, t64 = copy.deepcopy(tmodel).train(), copy.deepcopy(tmodel).double().train()
  x = np.random.default_rng(1).standard_normal((2, 64, 64, 3), dtype=np.float32)
  with torch.no_grad():
    ref32, ref64 = t32(nchw(x)).numpy(), t64(nchw(x).double()).numpy()
  with jax.default_matmul_precision('float32'):
    ours = model(jnp.asarray(x), train=True)
  err, rel = rel_diff(ours, ref64)
  err32, rel32 = rel_diff(ref32, ref64)
  print(f'\n[train] {arch} 64x64 logits vs torch fp64: ours rel={rel:.2g} (abs {err:.3g}), '
        f'torch fp32 rel={rel32:.2g}; ours vs torch fp32 rel={rel_diff(ours, ref32)[1]:.2g}')
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
    ref = tmodel.eval()(nchw(x)).numpy()
  with jax.default_matmul_precision('float32'):
    ours = flax_model(arch, pure, scan_blocks=True)(jnp.asarray(x), train=False)
  assert rel_diff(ours, ref)[1] < 1e-4
  _assert_train_forward_matches_torch(arch, tmodel, pure, scan_blocks=True)


@pytest.fixture(scope='module', params=WIDE_ARCHS)
def converted_wide(request):
  arch = request.param
  model = random_torch_resnet(arch).eval()
  return arch, model, torch_to_flax(model.state_dict(), arch)


def test_resnext_and_wide_resnet_eval_logits_match_torch(converted_wide):
  """36 px (odd sizes after each stride 2) exercises torch's symmetric padding at every stage."""
  arch, tmodel, pure = converted_wide
  model = flax_model(arch, pure)
  x = np.random.default_rng(0).standard_normal((2, 36, 36, 3), dtype=np.float32)
  with torch.no_grad():
    ref = tmodel.eval()(nchw(x)).numpy()
  with jax.default_matmul_precision('float32'):
    ours = model(jnp.asarray(x), train=False)
  err, rel = rel_diff(ours, ref)
  print(f'\n[eval] {arch} 36x36: max|diff|={err:.3g} max|logit|={np.abs(ref).max():.3g} '
        f'rel={rel:.2g}')
  assert rel < 1e-4, (arch, err, rel)
  assert (np.argmax(ours, -1) == np.argmax(ref, -1)).all()


@pytest.mark.parametrize('converted_wide', ['resnext50_32x4d', 'wide_resnet50_2'], indirect=True)
def test_resnext_and_wide_train_forward_matches_torch_outputs_and_running_stats(converted_wide):
  """One grouped and one wide net in train mode (the 101-layer ones only repeat their blocks) keeps
  the time down; their BN layers see the grouped and the widened convs' channels."""
  _assert_train_forward_matches_torch(*converted_wide)


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
  model = flax_model('resnet50', torch_to_flax(sd, 'resnet50'))
  x = np.stack([_imagenet_input(data.chelsea()), _imagenet_input(data.coffee())])
  with torch.no_grad():
    ref = tmodel(nchw(x)).numpy()
  with jax.default_matmul_precision('float32'):
    ours = np.asarray(model(jnp.asarray(x), train=False))
  err, rel = rel_diff(ours, ref)
  probs = jax.nn.softmax(ours, -1)
  top1 = ours.argmax(-1)
  print(f'\n[real] top-1 {top1.tolist()} probs {[round(float(p), 3) for p in probs.max(-1)]} '
        f'torch top-1 {ref.argmax(-1).tolist()} max|diff|={err:.3g} rel={rel:.2g}')
  np.testing.assert_array_equal(top1, ref.argmax(-1))
  assert top1[0] in range(281, 286), top1  # chelsea: a cat
  assert top1[1] in (967, 968), top1  # coffee: espresso / cup
  assert rel < 1e-4, (err, rel)
