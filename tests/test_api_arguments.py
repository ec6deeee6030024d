"""The notebook API's arguments, exports and README snippets that need no trained run."""

import importlib.metadata
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import jax_cifar
from jax_cifar import workdir as workdir_lib
from jax_cifar.configs import default
from _api_run import config as _config


def test_train_and_evaluate_names_a_config_that_is_not_a_configdict(tmp_path):
  for bad in (_config().to_dict(), None):  # Had been "'dict' object has no attribute 'to_dict'".
    with pytest.raises(TypeError, match=f'config must be an ml_collections ConfigDict.*got {type(bad).__name__}'):
      jax_cifar.train_and_evaluate(bad, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()
  from jax_cifar.training import trainer  # pylint: disable=import-outside-toplevel
  assert jax_cifar.Preempted is trainer.Preempted  # What a notebook's interrupt raises.


def test_package_exports_resolve_lazily():
  assert callable(jax_cifar.create_model) and callable(jax_cifar.train_and_evaluate)
  with pytest.raises(AttributeError):
    jax_cifar.no_such_thing  # pylint: disable=pointless-statement
  # dir() (tab completion, help) lists them though they are imported on first use.
  assert {'load_model', 'predict', 'create_model', 'list_models', '__version__'} <= set(dir(jax_cifar))
  assert not {'importlib', '_import_module'} & set(dir(jax_cifar))  # (importlib had been listed.)
  assert jax_cifar.__version__ == importlib.metadata.version('jax-cifar')
  # Subpackages too, as README writes them (had needed an import elsewhere first: an audit).
  code = ('import jax_cifar; print(jax_cifar.configs.default.get_config().model.name, '
          'jax_cifar.configs.resnet152.get_config().model.name, jax_cifar.evaluation.__name__)')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
  assert out.stdout.split() == [default.get_config().model.name, 'resnet152', 'jax_cifar.evaluation']
  with pytest.raises(AttributeError):
    jax_cifar._private  # pylint: disable=pointless-statement,protected-access
  names = jax_cifar.list_models()
  assert names[:2] == ['simple_cnn', 'resnet18'] and 'resnext50_32x4d' in names
  assert 'wide_resnet101_2' in names and len(names) == len(set(names)) == 11


def test_create_models_keywords_are_in_its_signature_with_the_models_defaults():
  """help(jax_cifar.create_model) had shown only **kwargs (a library-user review): its keywords
  are spelled out, with jax_cifar.models.create_model's defaults."""
  import inspect  # pylint: disable=import-outside-toplevel
  from jax_cifar import models  # pylint: disable=import-outside-toplevel
  ours = inspect.signature(jax_cifar.create_model).parameters
  theirs = {k: p for k, p in inspect.signature(models.create_model).parameters.items()
            if p.kind is not p.VAR_KEYWORD}
  assert set(ours) == set(theirs) | {'pretrained'}
  assert {k: ours[k].default for k in theirs} == {k: p.default for k, p in theirs.items()}
  assert not [p for p in ours.values() if p.kind is p.VAR_KEYWORD]
  net = jax_cifar.create_model('resnet18', 10, stem='cifar', width=4)
  assert (net.stem, net.num_classes) == ('cifar', 10)


def test_a_folder_argument_that_is_not_a_path_or_a_config_json_that_is_not_an_object_is_named(
    tmp_path):
  """load_model(None) and train_and_evaluate(config, None) had ended in pathlib's TypeError frames
  deep, a config.json of `[]` in ml_collections' bare AssertionError (an audit)."""
  for call in (lambda: jax_cifar.load_model(None),
               lambda: jax_cifar.train_and_evaluate(_config(), None)):
    with pytest.raises(TypeError, match=r'^(load_model\(run_dir\)|train_and_evaluate\(config, '
                                        r'workdir\)): give a folder \(a str or pathlib.Path\), got'):
      call()
  with pytest.raises(jax_cifar.UserError, match=r"^load_model\(run_dir\): the folder is empty"):
    jax_cifar.load_model(' ')
  (tmp_path / 'config.json').write_text('[]')
  with pytest.raises(workdir_lib.WorkdirError, match='holds a JSON list, not the object of a run'):
    jax_cifar.load_model(tmp_path)


def _run_readme_snippet(after: str, scope: dict) -> dict:
  """Runs README's first python block after the text `after` in `scope` (as printed, but for
  'runs/smoke', which becomes the name run_dir) and returns the scope."""
  readme = (pathlib.Path(__file__).resolve().parent.parent / 'README.md').read_text()
  code = readme.split(after, 1)[1].split('```python\n', 1)[1].split('```', 1)[0]
  exec(compile(code.replace("'runs/smoke'", 'run_dir'), 'README.md', 'exec'), scope)  # pylint: disable=exec-used
  return scope


def test_readmes_snippet_keeping_a_model_of_your_own_restores_it(tmp_path, monkeypatch):
  """A hand-trained model had no way back after the process ended (a library-user review): README
  gives orbax's, run here as printed, on a model whose head and weights differ from a fresh one."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  monkeypatch.chdir(tmp_path)
  real_create = jax_cifar.create_model
  made = []

  def create(*args, **kwargs):  # The first is 'trained': its weights drawn from another seed.
    made.append(real_create(*args, **kwargs, rngs=nnx.Rngs(7 if not made else 0)))
    return made[-1]
  monkeypatch.setattr(jax_cifar, 'create_model', create)
  scope = _run_readme_snippet('A model you trained or changed by hand', {})
  x = jnp.ones((2, 32, 32, 3))
  assert scope['again'] is made[1] and (tmp_path / 'my_net').is_dir()
  np.testing.assert_array_equal(scope['again'](x, train=False), scope['net'](x, train=False))
  assert np.abs(real_create('resnet18', 10, stem='cifar', width=16)(x, train=False)
                - scope['net'](x, train=False)).max() > 1e-3  # (Restored, not redrawn alike.)


def test_readmes_training_pieces_snippet_runs_as_written():
  """README's standalone snippet (augmentation, label smoothing, mixup, the optax chain), run as
  printed, on random uint8 images: the shapes and dtypes it promises."""
  rng = np.random.default_rng(0)
  scope = _run_readme_snippet('The training pieces work on their own too', {
      'config': default.get_config(), 'labels': rng.integers(0, 100, 8),
      'uint8_images': rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)})
  assert scope['one'].shape == (32, 32, 3) and scope['one'].dtype == np.uint8
  assert scope['x'].shape == (8, 32, 32, 3) and scope['x'].dtype == np.float32
  np.testing.assert_allclose(np.asarray(scope['targets']).sum(-1), 1.0, rtol=1e-6)
  assert 0.0 <= float(scope['lam']) <= 1.0 and float(scope['schedule'](500)) > 0
