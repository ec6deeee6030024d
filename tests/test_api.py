"""The notebook API: a trained run comes back as a model whose predictions are the run's own."""

import pathlib
import re
import signal
import warnings

import jax
import numpy as np
import pytest
from flax import nnx

import jax_cifar
from jax_cifar import tracking
from jax_cifar import workdir as workdir_lib
from jax_cifar.data import cifar100
from jax_cifar.evaluation import inference
from _api_run import config as _config
from test_api_arguments import _run_readme_snippet


_HANDLERS = {}  # SIGINT/SIGTERM handlers before and after the run's train_and_evaluate.


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('api_run')
  # As in an interactive session (a process started in the background has SIGINT ignored).
  original = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    jax_cifar.train_and_evaluate(_config(), str(workdir))
    _HANDLERS.update(before=before, after={sig: signal.getsignal(sig) for sig in before})
  finally:
    signal.signal(signal.SIGINT, original)
  return workdir


def test_training_gives_back_the_processs_own_signal_handlers(run):
  """The loop's SIGINT/SIGTERM handlers only set a flag it reads: left installed, a notebook's
  Ctrl-C and `kill PID` did nothing for the rest of the process (an audit)."""
  assert run.is_dir() and _HANDLERS['after'] == _HANDLERS['before']
  assert _HANDLERS['after'][signal.SIGINT] is signal.default_int_handler  # Ctrl-C works again.


def test_load_model_and_predict_reproduce_the_runs_validation_accuracy(run):
  model, config = jax_cifar.load_model(run, 'best')
  assert config.model.width == 4 and config.augment.rrc_scale == (0.35, 1.0)  # Tuples restored.
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))  # Loaded in eval mode: no train= needed.
  np.testing.assert_array_equal(model(x), model(x, train=False))
  val = cifar100.get_splits(config.data)['val']
  probs = jax_cifar.predict(model, config, val.images, batch_size=64)  # 80 images: 2 batches.
  assert probs.shape == (len(val), 100) and probs.dtype == np.float32
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  accuracy = float(np.mean(probs.argmax(-1) == val.labels))
  best = max(r['val_accuracy'] for r in tracking.read_metrics(run) if 'val_accuracy' in r)
  assert accuracy == pytest.approx(best, abs=1e-9)  # Same images, same weights, same numbers.
  # A second call (a notebook loop) reuses the compiled function: no new trace.
  hits = jax_cifar.api._probabilities_fn.cache_info().hits  # pylint: disable=protected-access
  again = jax_cifar.predict(model, config, val.images[:64], batch_size=64)
  assert jax_cifar.api._probabilities_fn.cache_info().hits == hits + 1  # pylint: disable=protected-access
  np.testing.assert_array_equal(again, probs[:64])


def test_ema_weights_are_a_different_model_and_bad_arguments_are_named(run):
  raw, config = jax_cifar.load_model(run, 'latest')
  ema, _ = jax_cifar.load_model(run, 'latest', weights='ema')
  images = cifar100.get_splits(config.data)['val'].images[:16]
  assert not np.allclose(jax_cifar.predict(raw, config, images), jax_cifar.predict(ema, config, images))
  with pytest.raises(ValueError, match=r'uint8 images.*float32.*\(images \* 255\)\.round\(\)'):
    jax_cifar.predict(raw, config, images.astype(np.float32) / 255)
  # Float pixels of 0-255: scaling by 255 would wrap them around in uint8 (200 -> 56).
  with pytest.raises(ValueError, match=r'float pixels of 0-255 become uint8 as '
                                       r'images\.round\(\)\.clip\(0, 255\)'):
    jax_cifar.predict(raw, config, images.astype(np.float32))
  # Another model's config: images prepared for that model had been predicted silently.
  for key, value, said in (('name', 'resnet50', "config.model.name is 'resnet50'"),
                           ('stem', 'imagenet', "config.model.stem is 'imagenet'")):
    other = config.copy_and_resolve_references()
    other.model[key] = value
    with pytest.warns(UserWarning, match=f'config may not describe this model .*{said}.*images '
                      'are prepared as it says'):
      jax_cifar.predict(raw, other, images)
  cnn = jax_cifar.create_model('simple_cnn', 100, rngs=nnx.Rngs(0))  # Told by its arch too.
  with pytest.warns(UserWarning, match="the model is a simple_cnn, config.model.name is 'resnet18'"):
    assert jax_cifar.predict(cnn, config, images[:0]).shape == (0, 100)
  # Normalised images had been told to round to 0-255 (pixels of 0-3: garbage, silently; an audit).
  normalised = (images / 255 - 0.5) / 0.25
  for bad, hint in ((normalised, 'these look normalised already (negative values)'),
                    (np.full(images.shape, np.nan), 'these hold NaN'),
                    (images[0], 'one image is images[None]'),
                    (images.transpose(0, 3, 1, 2), 'channels first (PyTorch): images.transpose('),
                    (images.astype(np.int64), 'these pixels fit: images.astype(np.uint8)')):
    with pytest.raises(ValueError, match=re.escape(hint)):
      jax_cifar.predict(raw, config, bad)
  with pytest.raises(ValueError, match="'best', 'latest', a step number or a step folder's path"):
    jax_cifar.load_model(run, 'newest')
  with pytest.raises(ValueError, match="weights must be one of raw, ema, auto, got 'emma'"):
    jax_cifar.load_model(run, 'latest', weights='emma')
  with pytest.raises(workdir_lib.WorkdirError,
                     match="nope does not exist: give the folder of a jax-cifar run"):
    jax_cifar.load_model(run / 'nope')
  for bad in (0, -1, 2.5, True):  # -1 had returned 0 rows for 16 images, silently
    with pytest.raises(ValueError, match=f'batch_size must be a positive int, got {bad!r}'):
      jax_cifar.predict(raw, config, images, batch_size=bad)
  assert jax_cifar.predict(raw, config, images, batch_size=np.int64(5)).shape == (16, 100)


def test_predict_names_swapped_or_partial_arguments_and_warns_on_unscaled_pixels(run):
  """Plausible notebook mistakes had given AttributeErrors, a ZeroDivisionError, or (floats in
  [0, 1] cast to uint8, all pixels 0 or 1) silent 1 % accuracy (an audit)."""
  model, config = jax_cifar.load_model(run, 'latest')
  images = cifar100.get_splits(config.data)['val'].images[:4]
  for args, match in [((model, images, config), 'config must be .*got ndarray'),
                      ((model, config.model, images), r'config\.model instead of config\?'),
                      ((model, config.to_dict(), images), 'config must be .*got dict'),
                      ((config, model, images), 'model must be a Flax nnx.Module.*got ConfigDict')]:
    with pytest.raises(TypeError, match=match):
      jax_cifar.predict(*args)
  with pytest.raises(ValueError, match=r'uint8 images \[N, H, W, 3\], got uint8 \(2, 0, 0, 3\)'):
    jax_cifar.predict(model, config, np.zeros((2, 0, 0, 3), np.uint8))
  unscaled = (images.astype(np.float32) / 255).astype(np.uint8)
  with pytest.warns(UserWarning, match=r'every pixel of these 4 uint8 images is 0 or 1'):
    jax_cifar.predict(model, config, unscaled)
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # Real images: no warning.
    jax_cifar.predict(model, config, images)
  # Finite weights whose forward pass overflows: NaN rows, which argmax reads as class 0, are said.
  graphdef, state = nnx.split(model)
  state = jax.tree.map(lambda v: v / max(float(abs(v).max()), 1e-30) * 3e38
                       if jax.numpy.issubdtype(v.dtype, jax.numpy.floating) else v, state)
  with pytest.warns(UserWarning, match=r'^predict: the probabilities of 4 of 4 images are not '
                                       r'finite \(NaN or inf\)'):
    jax_cifar.predict(nnx.merge(graphdef, state), config, images)


def test_an_edited_config_is_named_by_predict_and_load_predictor(run):
  """model.image_size 0 had been a TypeError deep in the resize, a normalisation name with a
  space a KeyError (a review of the leftovers)."""
  model, config = jax_cifar.load_model(run, 'latest')
  images = np.zeros((2, 32, 32, 3), np.uint8)
  for key, value, match in [('image_size', 0, r"'model.image_size' must be in \[16, 1024\], got 0"),
                            ('normalize', 'imagenet ', r"'model.normalize' must be one of")]:
    edited = config.copy_and_resolve_references()
    edited.model[key] = value
    with pytest.raises(ValueError, match=match):
      jax_cifar.predict(model, edited, images)
    with pytest.raises(ValueError, match=match):
      inference.load_predictor(edited, str(run), 'latest')
  with pytest.raises(TypeError, match='config is an ml_collections.ConfigDict.*got dict'):
    inference.load_predictor(config.to_dict(), str(run), 'latest')


def test_no_images_give_as_many_columns_as_the_model_has_classes(run):
  model, config = jax_cifar.load_model(run, 'latest')
  ten = jax_cifar.create_model('resnet18', 10, stem='cifar', width=4, rngs=nnx.Rngs(0))
  empty = np.zeros((0, 32, 32, 3), np.uint8)
  assert jax_cifar.predict(model, config, empty).shape == (0, 100)
  assert jax_cifar.predict(ten, config, empty).shape == (0, 10)  # Was (0, 100), from the config.
  assert jax_cifar.predict(ten, config, np.zeros((3, 32, 32, 3), np.uint8) + 9).shape == (3, 10)


def test_fewer_images_than_a_batch_are_padded_only_to_the_next_power_of_two(run, monkeypatch):
  """One image with the default batch_size of 500 had run a 500-row batch (28 s a call for a
  ResNet-50 at 128 px on a CPU, against 0.05 s)."""
  model, config = jax_cifar.load_model(run, 'latest')
  images = cifar100.get_splits(config.data)['val'].images[:9]
  reference = jax_cifar.predict(model, config, images, batch_size=9)
  shapes, make = [], jax_cifar.api._probabilities_fn  # pylint: disable=protected-access

  def recording(*args):
    fn = make(*args)
    return lambda state, x: shapes.append(x.shape[0]) or fn(state, x)

  monkeypatch.setattr(jax_cifar.api, '_probabilities_fn', recording)
  for n, padded in ((1, 1), (3, 4), (9, 16)):
    shapes.clear()
    np.testing.assert_allclose(jax_cifar.predict(model, config, images[:n]), reference[:n],
                               rtol=1e-5, atol=1e-7)
    assert shapes == [padded], (n, shapes)
  shapes.clear()
  jax_cifar.predict(model, config, images, batch_size=4)  # An explicit smaller batch is kept.
  assert shapes == [4, 4, 4]


def test_a_step_folder_loads_as_evaluate_checkpoint_does(run):
  step = max((run / 'checkpoints' / 'latest').iterdir(), key=lambda p: int(p.name))
  by_path, config = jax_cifar.load_model(run, str(step))
  latest, _ = jax_cifar.load_model(run, 'latest')
  images = cifar100.get_splits(config.data)['val'].images[:8]
  np.testing.assert_array_equal(jax_cifar.predict(by_path, config, images),
                                jax_cifar.predict(latest, config, images))
  # A step number (an int had been a TypeError traceback).
  for number in (int(step.name), step.name, np.int64(step.name)):
    by_number, _ = jax_cifar.load_model(run, number)
    np.testing.assert_array_equal(jax_cifar.predict(by_number, config, images),
                                  jax_cifar.predict(by_path, config, images))
  with pytest.raises(ValueError, match='kept no step 999'):
    jax_cifar.load_model(run, 999)
  for wrong_type in (2.5, None, True):  # A wrong type, not a missing folder.
    with pytest.raises(ValueError, match=rf"a step number .*, got {wrong_type!r}$"):
      jax_cifar.load_model(run, wrong_type)


def test_api_errors_share_user_error_and_raw_weights_of_an_ema_ranked_best_are_said(run, tmp_path):
  """load_model's mistakes had been ValueError, WorkdirError or CheckpointError with no common base
  a notebook could catch; the 'best' step of a run that ranked by its EMA came back as raw
  weights without a word (an audit)."""
  import json  # pylint: disable=import-outside-toplevel
  import shutil  # pylint: disable=import-outside-toplevel
  for bad in ((run, 'newest'), (run, 'latest', 'emma'), (run / 'nope',)):
    with pytest.raises(jax_cifar.UserError):
      jax_cifar.load_model(*bad)
  ranked = tmp_path / 'ranked'
  shutil.copytree(run, ranked)
  record = json.loads((ranked / 'config.json').read_text())
  assert record['ema']['decay'] > 0
  record['checkpoint']['best_weights'] = 'ema'
  (ranked / 'config.json').write_text(json.dumps(record))
  with pytest.warns(UserWarning, match=r"'best' step was chosen by its EMA weights' accuracy"):
    jax_cifar.load_model(ranked)
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    jax_cifar.load_model(ranked, weights='ema')
    jax_cifar.load_model(ranked, weights='raw')  # Asked for by name (it had warned: a review).
    jax_cifar.load_model(run)  # Ranked by its raw weights: nothing to say.


def test_readmes_test_time_tools_snippet_runs_as_written(run):
  """README's load_predictor snippet on a trained run: log-probabilities, and without tools the
  same numbers as predict."""
  model, config = jax_cifar.load_model(run, 'best')
  images = cifar100.get_splits(config.data)['val'].images[:16]
  scope = _run_readme_snippet("`evaluate`'s test-time tools on images of your own", {
      'config': config, 'run_dir': str(run), 'uint8_images': images})
  assert scope['log_probs'].shape == (16, 100)
  np.testing.assert_allclose(np.exp(scope['log_probs']).sum(-1), 1.0, rtol=1e-5)
  predictor = scope['inference'].load_predictor(config, str(run), 'best')[0]
  plain = predictor.run(images, 'plain')
  np.testing.assert_allclose(np.exp(plain), jax_cifar.predict(model, config, images), atol=1e-6)
  # No images: no rows, as predict gives (range() with a step of 0 had raised: a review).
  assert predictor.run(images[:0], 'none').shape == (0, 100)
  assert predictor.run(images[:0], 'none', labels_only=True).shape == (0,)


def test_another_runs_step_folder_is_checked_against_that_runs_config(run, tmp_path):
  """load_model(A, checkpoint=B's step folder) had paired B's weights with A's config, silently,
  where `evaluate --checkpoint` refuses it: images prepared for another normalisation (an audit)."""
  import json  # pylint: disable=import-outside-toplevel
  import shutil  # pylint: disable=import-outside-toplevel
  own = json.loads((run / 'config.json').read_text())['model']['normalize']
  for name, normalize in (('same', own), ('other', 'imagenet' if own != 'imagenet' else 'cifar')):
    shutil.copytree(run, tmp_path / name)
    record = json.loads((tmp_path / name / 'config.json').read_text())
    record['model']['normalize'] = normalize
    (tmp_path / name / 'config.json').write_text(json.dumps(record))
  step = lambda r: str(max((r / 'checkpoints' / 'latest').iterdir(), key=lambda p: int(p.name)))
  with pytest.raises(jax_cifar.UserError, match=(
      rf"model.normalize '{normalize}' \(run\) vs '{own}' \(run_dir\).*Load that run itself: "
      rf"load_model\('{re.escape(str(tmp_path / 'other'))}'")):
    jax_cifar.load_model(run, step(tmp_path / 'other'))
  jax_cifar.load_model(run, step(tmp_path / 'same'))  # A run that predicts alike loads.
  # load_predictor, the same (it had taken both, and a config that is not the run's, silently:
  # a library-user review), and a step number as load_model does.
  config = jax_cifar.run_config(run)
  with pytest.raises(jax_cifar.UserError, match=r"model.normalize .* \(workdir\).*Load that run"):
    inference.load_predictor(config, str(run), step(tmp_path / 'other'))
  inference.load_predictor(config, str(run), step(tmp_path / 'same'))
  with pytest.raises(jax_cifar.UserError, match=r"model.normalize .* \(config\).*run_config"):
    inference.load_predictor(jax_cifar.run_config(tmp_path / 'other'), str(run), 'latest')
  kept = int(pathlib.Path(step(run)).name)
  for number in (kept, str(kept), np.int64(kept)):
    assert inference.load_predictor(config, str(run), number)[1] == kept
  with pytest.raises(jax_cifar.UserError, match=f'kept no step {kept + 1000}'):
    inference.load_predictor(config, str(run), kept + 1000)


def test_weights_auto_of_another_runs_step_ranks_by_that_runs_validation(run, tmp_path,
                                                                          monkeypatch):
  """load_model and evaluate's predictor rank raw against EMA at a step by the validation rows
  of the run that saved it: another run's step folder had been ranked by this run's rows."""
  import shutil  # pylint: disable=import-outside-toplevel
  from jax_cifar import state as state_lib  # pylint: disable=import-outside-toplevel
  from jax_cifar.evaluation import inference  # pylint: disable=import-outside-toplevel
  shutil.copytree(run, tmp_path / 'other')
  step = max((tmp_path / 'other' / 'checkpoints' / 'latest').iterdir(), key=lambda p: int(p.name))
  ranked_by = []
  monkeypatch.setattr(state_lib, 'resolve_weights',
                      lambda weights, state, workdir, at: ranked_by.append(str(workdir)) or 'raw')
  jax_cifar.load_model(run, step, weights='auto')
  inference.load_predictor(jax_cifar.run_config(run), str(run), str(step / 'default'),
                           weights='auto')
  jax_cifar.load_model(run, 'latest', weights='auto')
  assert ranked_by == [str(tmp_path / 'other')] * 2 + [str(run)]


def test_the_processes_agree_on_the_step_they_restored_before_evaluating(run, monkeypatch):
  """Each process lists the checkpoints itself: a run still saving had let two processes restore
  different steps, mixed silently in one evaluation (a review). The step goes through
  parallel.same_on_every_process, which refuses a disagreement (test_trainer.py)."""
  from jax_cifar import parallel  # pylint: disable=import-outside-toplevel
  from jax_cifar.evaluation import inference  # pylint: disable=import-outside-toplevel
  agreed, real = [], parallel.same_on_every_process
  monkeypatch.setattr(parallel, 'same_on_every_process',
                      lambda value, what: agreed.append((value, what)) or real(value, what))
  _, step = inference.load_predictor(jax_cifar.run_config(run), str(run), 'latest')
  assert (step, "the step of 'latest' restored") in agreed


def test_a_path_inside_a_run_a_tilde_and_a_missing_best_point_the_way(run, tmp_path, monkeypatch):
  """A run's config.json, checkpoints/ or a step folder given as the run had said only "is it a
  run directory?"; '~/run' was not expanded; a run without a 'best' step did not say 'latest' has
  one (an audit)."""
  import shutil  # pylint: disable=import-outside-toplevel
  step = max((run / 'checkpoints' / 'latest').iterdir(), key=lambda p: int(p.name))
  for inside in (run / 'config.json', run / 'checkpoints', step, step / 'default'):
    with pytest.raises(workdir_lib.WorkdirError, match=(
        rf'inside the run {re.escape(str(run))}: give that folder \(a step folder is')):
      jax_cifar.load_model(inside)
  with pytest.raises(workdir_lib.WorkdirError, match=r'a jax-cifar run directory\?$'):
    jax_cifar.load_model(tmp_path)  # Inside no run: no hint.
  # A folder that is not there is said so (it had been "MISSING/config.json not found": a review).
  with pytest.raises(workdir_lib.WorkdirError, match=(
      rf'^{re.escape(str(tmp_path / "typo"))} does not exist: give the folder of a jax-cifar run '
      r'\(its --workdir\)$')):
    jax_cifar.load_model(tmp_path / 'typo')
  monkeypatch.setenv('HOME', str(run.parent))
  assert jax_cifar.load_model(f'~/{run.name}', 'latest')[1] == jax_cifar.run_config(run)
  # ... and so do load_predictor and evaluate (they had said '~/NAME/config.json not found').
  assert inference.load_predictor(jax_cifar.run_config(run), f'~/{run.name}',
                                  'latest')[1] == int(step.name)
  copy = tmp_path / 'copy'
  shutil.copytree(run, copy)
  monkeypatch.setenv('HOME', str(tmp_path))
  from jax_cifar import evaluate  # pylint: disable=import-outside-toplevel
  assert evaluate.evaluate(jax_cifar.run_config(copy), '~/copy', 'latest')['step'] == int(step.name)
  assert (copy / 'eval_latest.json').is_file()
  folder = f'~/copy/checkpoints/latest/{step.name}'  # A step folder too, as load_model's.
  assert inference.load_predictor(jax_cifar.run_config(copy), '~/copy', folder)[1] == int(step.name)
  assert evaluate.evaluate(jax_cifar.run_config(copy), '~/copy', folder)['step'] == int(step.name)
  no_best = tmp_path / 'no_best'
  shutil.copytree(run, no_best)
  shutil.rmtree(no_best / 'checkpoints' / 'best')
  with pytest.raises(jax_cifar.UserError, match=(
      rf"no 'best' checkpoint .*; its 'latest' one holds steps \d+, {step.name}: ask for "
      r"'latest' instead$")):
    jax_cifar.load_model(no_best)


def test_a_predictor_refuses_images_that_are_not_uint8_and_counts_adaptation_passes(
    run, monkeypatch):
  """README's load_predictor(...).run() had taken float pixels in [0, 1] and divided them by 255
  again (nearly black images, wrong log-probabilities, no error); with BN adaptation its progress
  bar counted 8 images as 16 (an audit)."""
  from jax_cifar.evaluation import inference  # pylint: disable=import-outside-toplevel
  config = jax_cifar.run_config(run)
  images = cifar100.get_splits(config.data)['val'].images[:8]
  predictor, _ = inference.load_predictor(config, str(run), 'best', adapt_bn=True)
  with pytest.raises(ValueError, match=r'Predictor.run expects uint8 images .* float32 \(8, 32, 32, '
                                       r'3\); float images in \[0, 1\] become uint8 as'):
    predictor.run(images.astype(np.float32) / 255, 'x')
  bars, tqdm = [], inference.tqdm.tqdm
  monkeypatch.setattr(inference.tqdm, 'tqdm', lambda **kw: bars.append(kw) or tqdm(**kw))
  assert predictor.run(images, 'mine').shape == (8, 100)
  assert [(b['desc'], b['total']) for b in bars] == [('mine (2 passes)', 16)]


def test_load_predictor_refuses_a_view_name_as_its_old_flip_flag_and_takes_tent_true(run):
  """load_predictor(config, run, 'best', 'shifts') had run flip TTA without a word ('shifts' was
  the truthy 4th argument, the old tta_flip), and tent=True, as README words it, had failed with
  AttributeError: 'bool' object has no attribute 'lr' (a new-user walkthrough)."""
  from jax_cifar.evaluation import inference, tent  # pylint: disable=import-outside-toplevel
  config = jax_cifar.run_config(run)
  with pytest.raises(TypeError, match=r"tta_flip is True or False .* got 'shifts': give the views "
                                      r'as tta_mode=\.\.\.'):
    inference.load_predictor(config, str(run), 'best', 'shifts')
  with pytest.raises(TypeError, match=r'tent is True, False or a tent\.TentOptions, got 0\.001'):
    inference.load_predictor(config, str(run), 'best', tent=1e-3)
  images = cifar100.get_splits(config.data)['val'].images[:8]
  by_flag = inference.load_predictor(config, str(run), 'best', tent=True)[0].run(images, 'x')
  by_options = inference.load_predictor(config, str(run), 'best',
                                        tent=tent.TentOptions())[0].run(images, 'x')
  plain = inference.load_predictor(config, str(run), 'best')[0].run(images, 'x')
  np.testing.assert_array_equal(by_flag, by_options)
  assert np.abs(by_flag - plain).max() > 1e-3  # (Tent ran: its log-probabilities differ.)


def test_a_relaunch_of_a_finished_run_returns_its_last_validation(run, tmp_path, monkeypatch):
  """A notebook cell run again on a finished run had returned no val_* numbers (KeyError on
  result['val_accuracy'], where README promises them: a library-user review). Given as '~/again',
  as load_model takes it: train_and_evaluate had trained a new run in ./~/again (a review)."""
  import shutil  # pylint: disable=import-outside-toplevel
  again = tmp_path / 'again'
  shutil.copytree(run, again)
  monkeypatch.setenv('HOME', str(tmp_path))
  monkeypatch.chdir(tmp_path / 'again')
  result = jax_cifar.train_and_evaluate(_config(), '~/again')
  assert not (tmp_path / 'again' / '~').exists()
  last = [r for r in tracking.read_metrics(run) if 'val_accuracy' in r][-1]
  assert result['step'] == last['step'] == result['total_steps']
  for key in ('val_loss', 'val_accuracy', 'val_top5_accuracy', 'val_accuracy_ema'):
    assert result[key] == last[key]
