"""A built wheel works outside the checkout: configs, validation and the tools come from the package."""

import pathlib
import site
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = ['--config.data.source=synthetic', '--config.data.synthetic_size=256',
        '--config.data.val_fraction=0.25', '--config.model.width=4', '--config.train.batch_size=32',
        '--config.train.eval_batch_size=64', '--config.train.num_epochs=1',
        '--config.train.log_every_steps=2']


@pytest.mark.slow
def test_wheel_installed_in_a_fresh_venv_trains_and_evaluates_from_another_directory(tmp_path):
  wheels = tmp_path / 'wheels'
  subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation',
                  '-w', str(wheels), str(ROOT)], check=True, capture_output=True)
  (wheel,) = wheels.glob('jax_cifar-*.whl')
  venv = tmp_path / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True)
  python = venv / 'bin' / 'python'
  # The wheel alone goes into the new venv; its dependencies come from this environment's
  # site-packages on PYTHONPATH (no network), which holds no jax_cifar (it is an editable install).
  env = {'PYTHONPATH': ':'.join(site.getsitepackages()), 'PATH': f'{venv / "bin"}:/usr/bin:/bin',
         'HOME': str(tmp_path), 'JAX_PLATFORMS': 'cpu'}
  subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--ignore-installed',
                  '--no-compile',
                  '--prefix', str(venv), str(wheel)], check=True, capture_output=True)
  work = tmp_path / 'elsewhere'
  work.mkdir()
  run = lambda *args: subprocess.run([str(python), *args], cwd=work, env=env, capture_output=True,
                                     text=True, check=False)
  where = run('-c', 'import jax_cifar.configs.default as d; print(d.__file__)')
  assert where.returncode == 0 and str(venv) in where.stdout, where.stderr[-2000:]
  out = run('-m', 'jax_cifar.train', '--config', 'jax_cifar:smoke', '--workdir', 'run', *TINY)
  assert out.returncode == 0, out.stderr[-3000:]
  assert (work / 'run' / 'checkpoints' / 'best').is_dir()
  out = run('-m', 'jax_cifar.evaluate', '--config', 'jax_cifar:smoke', '--workdir', 'run', *TINY)
  assert out.returncode == 0 and '"test_accuracy"' in out.stdout.splitlines()[-1], out.stderr[-3000:]
  out = run(str(venv / 'bin' / 'jax-cifar'))  # (pip --prefix wrote the installer's shebang)
  assert 'commands:' in out.stderr and 'evaluate' in out.stderr  # The console entry point.
