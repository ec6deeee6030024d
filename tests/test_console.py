"""What a user sees in the terminal: the run's own lines, not library INFO logs."""

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
ARGS = ['--config.data.source=synthetic', '--config.data.synthetic_size=256',
        '--config.data.val_fraction=0.25', '--config.model.name=simple_cnn', '--config.train.batch_size=32',
        '--config.train.num_epochs=2', '--config.train.log_every_steps=2',
        '--config.checkpoint.every_steps=3']


def _train(workdir, *extra):
  return subprocess.run([sys.executable, '-m', 'jax_cifar.train', '--config', 'jax_cifar:default',
                         '--workdir', str(workdir), *ARGS, *extra],
                        cwd=ROOT, capture_output=True, text=True, check=False)


@pytest.mark.slow
def test_training_console_shows_start_evaluations_and_summary_but_no_library_info(tmp_path):
  out = _train(tmp_path / 'run')
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stderr.replace('\r', '\n').splitlines()
  assert not [l for l in lines if re.match(r'I\d{4} ', l)], [l for l in lines if l.startswith('I')][:5]
  assert not [l for l in lines if 'orbax' in l or 'checkpoint_manager' in l]
  assert any(l.startswith('simple_cnn: ') and '12 steps, ' in l and str(tmp_path / 'run') in l
             and 'stops at' not in l for l in lines)
  # Each validation shows its own bar while it runs (it had sat behind a still train bar).
  assert any(l.startswith('val:') and 'img' in l for l in lines), lines
  evals = [l for l in lines if re.match(r'epoch \d+\.\d+ step \d+: val_loss', l)]
  assert len(evals) == 2 and all('(best ' in l for l in evals), evals  # One per epoch.
  assert any(l.startswith('Done at step 12: best val_accuracy ') for l in lines)
  # --verbosity=0 brings the library logs back for debugging.
  out = _train(tmp_path / 'run2', '--verbosity=0', '--config.train.max_steps=7',
               '--config.train.max_steps', '3', '--config.ema.warmup_power=0.5')
  assert out.returncode == 0 and re.search(r'^I\d{4} ', out.stderr, re.M), out.stderr[-2000:]
  first_verbose = out.stderr
  # An override given twice is named (absl takes the last one without a word: a walkthrough).
  assert ('--config.train.max_steps is given 2 times (7, 3): the last one, 3, is used'
          in out.stderr), out.stderr[-2000:]
  # A key that does nothing here is named (it had been ignored without a word) ...
  assert "config key 'ema.warmup_power'=0.5 is ignored: there is no EMA" in out.stderr
  # The start line says where a max_steps launch stops (it said only '12 steps': an audit).
  assert re.search(r'^simple_cnn: .* 12 steps \(this launch stops at step 3: train.max_steps\), ',
                   out.stderr, re.M), out.stderr[-2000:]
  # A max_steps the run has passed: it had said 'this launch stops at step 2', then 'Done at 3'.
  # ... and dropping it is no change of the run (it is inert in both configs).
  out = _train(tmp_path / 'run2', '--config.train.max_steps=2', '--config.ema.warmup_power=0.5')
  assert out.returncode == 0 and re.search(
      r'^simple_cnn: .* 12 steps \(train.max_steps=2: this launch, at step 3, trains none\), ',
      out.stderr, re.M) and 'Done at step 3: ' in out.stderr, out.stderr[-2000:]
  # Its warnings plain (absl's "W1205 12:13:54.363783 140567184821120 file.py:94] " had buried
  # them: a review), as with --verbosity=0 they are not.
  assert re.search(r"^W\d{4} .*\] config key 'ema.warmup_power'=0.5 is ignored", first_verbose,
                   re.M), first_verbose[-2000:]
  assert re.search(r"^warning: config key 'ema.warmup_power'=0.5 is ignored: there is no EMA ",
                   out.stderr, re.M) and not re.search(r"^W\d{4} ", out.stderr, re.M), out.stderr
