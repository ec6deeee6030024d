"""scripts/benchmark_augment.py (augmentation img/s per policy, then the train step at the same
batch) and scripts/show_augmentations.py: their arithmetic, flags and errors (no timings)."""

import json
import pathlib
import types

import pytest

from conftest import load_script

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize('argv, message', [
    (['--robust', 'nosie'], '--robust: unknown nosie'),
    (['--policies', 'none,autoagment'], '--policies: unknown autoagment'),
    (['--train_models', 'smok'], "--train_models: unknown model spec 'smok'"),
    (['--runs', '0'], '--runs and --batch_size must be at least 1')])
def test_benchmark_augment_refuses_bad_flags_before_measuring(argv, message, capsys, monkeypatch):
  """They had failed after the policies were measured (a traceback; the summary lost), or printed
  nan img/s as invalid JSON (an audit)."""
  monkeypatch.syspath_prepend(str(ROOT / 'scripts'))
  script = load_script('benchmark_augment')
  monkeypatch.setattr(script, 'benchmark', lambda *a, **k: pytest.fail('measured before refusing'))
  with pytest.raises(SystemExit) as e:
    script.main(argv)
  assert e.value.code == 2 and message in capsys.readouterr().err


def test_show_augmentations_names_a_folder_without_the_data(tmp_path, capsys):
  script = load_script('show_augmentations')
  with pytest.raises(SystemExit) as e:
    script.main(['--data_dir', str(tmp_path), '--out', str(tmp_path / 'a.png')])
  err = capsys.readouterr().err
  assert e.value.code == 1 and err.startswith(f'error: {tmp_path}: no cifar-100-python/'), err
  assert not (tmp_path / 'a.png').exists()


def test_benchmark_augment_img_s_is_the_batch_over_the_median_call_with_the_overrides_on(
    monkeypatch):
  """On a fake clock: the compile takes 1 s and the three timed calls 1, 3 and 6 s, so img/s is
  the batch over the median 3 s (every call had taken one tick, so the max or the first call passed
  too: a test audit); the --robust overrides reach the augmentation config (a mutation audit)."""
  monkeypatch.syspath_prepend(str(ROOT / 'scripts'))
  script = load_script('benchmark_augment')
  seen = []
  monkeypatch.setattr(script, 'augment', types.SimpleNamespace(
      augment_batch=lambda key, x, cfg: seen.append(cfg.to_dict()) or x))
  ticks = iter([0, 1, 10, 11, 20, 23, 30, 36])
  monkeypatch.setattr(script, 'time', types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
  r = script.benchmark('randaugment', 12, 3, **script.ROBUST['rrc'])
  assert r == {'images_per_sec': 4.0, 'compile_s': 1.0}
  assert seen and all(c['policy'] == 'randaugment' and c['rrc_prob'] == 1.0 for c in seen)


def test_benchmark_augment_reports_each_policy_and_the_train_step_at_its_batch(monkeypatch, capsys):
  monkeypatch.syspath_prepend(str(ROOT / 'scripts'))
  script = load_script('benchmark_augment')
  import benchmark as train_benchmark  # pylint: disable=import-outside-toplevel  (as the script does)
  calls = []
  monkeypatch.setattr(script, 'benchmark', lambda policy, batch, runs, **kw: calls.append(
      (policy, batch, runs, kw)) or {'images_per_sec': 1000.04 + len(calls), 'compile_s': 9.0})
  monkeypatch.setattr(train_benchmark, 'bench_jax', lambda config, **kw: calls.append(
      (config.model.name, config.train.batch_size, config.model.dtype)) or {'img_s': 123.456})
  script.main(['--batch_size', '16', '--runs', '2', '--policies', 'none',
               '--robust', 'augmix,all', '--train_models', 'smoke'])
  assert calls == [('none', 16, 2, {}), ('none', 16, 2, {'augmix': True}),
                   ('none', 16, 2, script.ROBUST['all']), ('resnet18', 16, 'float32')]
  summary = json.loads(capsys.readouterr().out.splitlines()[-1])
  assert (summary['batch_size'], summary['none'], summary['augmix'], summary['all']) == (
      16, 1001.0, 1002.0, 1003.0)
  assert summary['train_step_smoke'] == 123.5 and 'cores' in summary['machine']


def test_benchmark_augment_refuses_a_batch_of_zero(capsys):
  script = load_script('benchmark_augment')
  with pytest.raises(SystemExit) as e:
    script.main(['--batch_size', '0', '--train_models', ''])
  assert e.value.code == 2 and '--runs and --batch_size must be at least 1' in capsys.readouterr().err


def test_show_augmentations_captions_each_magnitude_in_its_unit():
  """Bare signed numbers had said nothing of what each op did, Posterize's '+8' less (a figure
  review); the enhancements' factor is 1 + the magnitude, as torchvision applies it."""
  caption = load_script('show_augmentations').caption
  assert [caption('Posterize', 8.0), caption('Rotate', -30.0), caption('TranslateX', 13.0),
          caption('ShearY', 0.3), caption('Solarize', 28.4), caption('Brightness', -0.1),
          caption('Contrast', 0.9)] == ['8 bits', '-30°', '+13 px', 'shear +0.30', 'above 28',
                                        'x0.90', 'x1.90']
