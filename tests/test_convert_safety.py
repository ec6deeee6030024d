"""Converter safety: a file that is not a state_dict is named so, never with advice to unpickle it
unsafely; the script refuses an --output it cannot or must not write before loading anything; a
killed run leaves no partial output (the kill is injected at a named point through
JAX_CIFAR_CONVERT_KILL_AT). The converted folder itself (--overwrite, damage, temps):
test_convert_output.py."""

import argparse
import hashlib
import logging
import os
import pathlib
import pickle
import signal
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest

from conftest import load_script, needs_proc, require_module, TOO_LARGE
from jax_cifar import convert, convert_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, 'scripts', 'convert_torchvision_weights.py')
KILL_ENV = 'JAX_CIFAR_CONVERT_KILL_AT'  # test hook: the converter SIGKILLs itself at this point


torch = require_module('torch')
torchvision = require_module('torchvision')


@pytest.fixture(scope='module')
def script():
  return load_script('convert_torchvision_weights')


def _run_main(script, capsys, argv: list[str]) -> tuple[int, str]:
  capsys.readouterr()
  rc = script.main(argv)
  return rc, capsys.readouterr().err


def _resnet18_state_dict(seed: int) -> dict:
  torch.manual_seed(seed)
  return torchvision.models.resnet18().state_dict()


class _RunsCode:
  """A pickle payload: unpickling it would create `marker`."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


def _bad_files(tmp) -> dict[str, tuple[str, str]]:
  """name -> (file, what the error must say about it)."""
  rng = np.random.default_rng(0)
  files = {}

  def put(name, needle, save=None, raw=None):
    path = str(tmp / name)
    if save is not None:
      torch.save(save, path)
    else:
      with open(path, 'wb') as f:
        f.write(raw)
    files[name] = (path, needle)

  put('module.pth', 'torch.nn.modules.container.Sequential',
      save=torch.nn.Sequential(torch.nn.Linear(2, 2)))
  put('code.pth', 'system', save={'conv1.weight': _RunsCode(tmp / 'pwned')})
  put('code4.pth', 'not a file written by torch.save',  # A bare pickle (protocol 4).
      raw=pickle.dumps({'conv1.weight': _RunsCode(tmp / 'pwned')}, protocol=4))
  put('tensor.pth', 'a Tensor', save=torch.zeros(3))
  put('list.pth', 'a list', save=[torch.zeros(2)])
  put('numbers.pth', "'epochs' holds an int", save={'epochs': 3, 'fc.weight': torch.zeros(2)})
  put('optimizer.pth', "'state' holds a dict",
      save=torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1).state_dict())
  put('nothing.pth', 'no tensors', save={})
  put('random.bin', 'not a file written by torch.save', raw=b'\x00' + rng.bytes(999))
  put('bad_pickle.pth', 'not a file written by torch.save', raw=b'\x80\x02' + rng.bytes(998))
  put('text.txt', 'not a file written by torch.save', raw=b'hello world\n')
  put('empty.pth', 'empty', raw=b'')
  zip_path = str(tmp / 'other.zip')
  with zipfile.ZipFile(zip_path, 'w') as z:
    z.writestr('a.txt', 'hi')
  files['other.zip'] = (zip_path, 'not a file written by torch.save')
  put('arrays.pth', 'it holds numpy arrays', save={'fc.weight': np.zeros((2, 2), np.float32)})
  header = b'{"fc.weight":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
  put('weights.safetensors', 'it is a safetensors file',
      raw=len(header).to_bytes(8, 'little') + header + b'\0' * 4)
  put('scripted.pt', 'it is a TorchScript model', raw=b'')
  with warnings.catch_warnings():  # (torch.jit is deprecated; users' old files are not.)
    warnings.simplefilter('ignore', FutureWarning)
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), files['scripted.pt'][0])
  npz_path = str(tmp / 'weights.npz')
  np.savez(npz_path, **{'fc.weight': np.zeros(2)})
  files['weights.npz'] = (npz_path, 'it is a numpy .npz archive')
  whole = str(tmp / 'whole.pth')
  torch.save({'fc.weight': torch.zeros(100, 100)}, whole)
  with open(whole, 'rb') as f:
    put('truncated.pth', 'not a complete file written by torch.save', raw=f.read()[:20000])
  return files


def test_files_that_are_not_state_dicts_are_named_so_without_unsafe_advice(script, tmp_path,
                                                                          capsys):
  out = tmp_path / 'out'
  for name, (path, needle) in _bad_files(tmp_path).items():
    with warnings.catch_warnings(record=True) as caught:  # torch's notes, printed to stderr.
      warnings.simplefilter('always')
      rc, err = _run_main(script, capsys, ['--arch', 'resnet18', '--state_dict', path,
                                           '--output', str(out)])
    assert not [w for w in caught if 'torch' in w.filename], (name, [str(w.message) for w in caught])
    lines = err.strip().splitlines()
    assert rc == 1 and len(lines) == 1 and lines[0].startswith('error: '), (name, err)
    expected = f'{path} is not a PyTorch state_dict (a mapping of parameter names to tensors): '
    assert expected in lines[0] and needle in lines[0], (name, lines[0])
    for unsafe in ('weights_only', 'safe_globals', 'can still be loaded'):
      assert unsafe not in err, (name, err)
    assert not out.exists()
  assert not (tmp_path / 'pwned').exists(), 'torch.load must not execute pickled code'


def test_wrapped_state_dicts_are_unwrapped(script, tmp_path, capsys):
  """... by main() called in-process, which leaves the caller's logging as it was (only the
  commands take over the root logger: forced in main(), it had dropped pytest's handlers)."""
  sd = _resnet18_state_dict(0)
  root = logging.getLogger()
  handlers, level = list(root.handlers), root.level
  for i, wrapped in enumerate(({'state_dict': sd, 'epoch': 3}, {'model': sd},
                               {'epoch': 3, 'model_state_dict': sd, 'optimizer_state_dict': {},
                                'loss': 1.0},  # PyTorch's tutorial checkpoint.
                               # torchvision's references/classification/train.py (and timm's)
                               # save their argparse arguments beside the weights: refused before.
                               {'model': sd, 'args': argparse.Namespace(lr=0.1, arch='resnet18'),
                                'epoch': 3})):
    path = tmp_path / f'w{i}.pth'
    torch.save(wrapped, path)
    out = tmp_path / f'out{i}'
    rc, err = _run_main(script, capsys, ['--arch', 'resnet18', '--state_dict', str(path),
                                         '--output', str(out)])
    assert rc == 0, err
    np.testing.assert_array_equal(convert.read_converted(str(out))[1]['fc.kernel'],
                                  sd['fc.weight'].numpy().T)
    assert (root.handlers, root.level) == (handlers, level)


def test_a_checkpoint_with_its_weights_under_another_key_says_where_they_are(script, tmp_path,
                                                                              capsys):
  path = tmp_path / 'ckpt.pth'
  torch.save({'epoch': 3, 'net': _resnet18_state_dict(0)}, path)
  rc, err = _run_main(script, capsys, ['--arch', 'resnet18', '--state_dict', str(path),
                                       '--output', str(tmp_path / 'out')])
  lines = [l for l in err.splitlines() if l.startswith('error:')]
  assert rc != 0 and len(lines) == 1, err
  assert "'epoch' holds an int, not a tensor; the tensors seem to be under 'net'" in lines[0], err
  assert not (tmp_path / 'out').exists()


# ------------------------------------------------------------------ --weights (torch hub cache)
def _hub_file(tmp_path, arch: str, name: str) -> str:
  weights = torchvision.models.get_model_weights(arch)[name]
  folder = tmp_path / 'torch_home' / 'hub' / 'checkpoints'
  folder.mkdir(parents=True, exist_ok=True)
  return str(folder / os.path.basename(weights.url))


def _hashed_hub_file(tmp_path, monkeypatch, sd, arch: str, name: str) -> str:
  """Saves `sd` in torch hub's cache under the name the weights' URL gives it, a name that holds
  the sha256 prefix of that file (torchvision's real weights cannot be downloaded here)."""
  staged = tmp_path / 'staged.pth'
  torch.save(sd, staged)
  prefix = hashlib.sha256(staged.read_bytes()).hexdigest()[:8]
  real = torchvision.models.get_model_weights(arch)[name].url
  url = f'{real.rsplit("-", 1)[0]}-{prefix}.pth'
  real_url = convert_cli._weights_url  # pylint: disable=protected-access
  monkeypatch.setattr(convert_cli, '_weights_url',
                      lambda a, n: url if (a, n) == (arch, name) else real_url(a, n))
  path = tmp_path / 'torch_home' / 'hub' / 'checkpoints' / os.path.basename(url)
  path.parent.mkdir(parents=True, exist_ok=True)
  staged.rename(path)
  return str(path)


def test_weights_name_converts_a_cached_download_offline(script, tmp_path, capsys, monkeypatch):
  monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
  torch.manual_seed(0)
  sd = torchvision.models.resnext50_32x4d().state_dict()
  _hashed_hub_file(tmp_path, monkeypatch, sd, 'resnext50_32x4d', 'IMAGENET1K_V2')
  out = str(tmp_path / 'out')
  rc, err = _run_main(script, capsys, ['--arch', 'resnext50_32x4d', '--weights', 'IMAGENET1K_V2',
                                       '--output', out])
  assert rc == 0, err
  meta, ckpt = convert.read_converted(out)
  assert meta['arch'] == 'resnext50_32x4d' and meta['source'].endswith('.pth')
  np.testing.assert_array_equal(ckpt['layer1.0.conv2.kernel'],
                                sd['layer1.0.conv2.weight'].numpy().transpose(2, 3, 1, 0))
  rc, err = _run_main(script, capsys, ['--arch', 'resnext101_64x4d', '--weights', 'IMAGENET1K_V2',
                                       '--output', str(tmp_path / 'out2')])
  assert rc == 1 and 'resnext101_64x4d has IMAGENET1K_V1, DEFAULT' in err, err


def test_another_file_under_the_weights_name_in_the_hub_cache_is_refused(script, tmp_path, capsys,
                                                                        monkeypatch):
  """torch.hub trusts a cached file: random weights saved under the ImageNet weights' name had
  been converted as them without a word (a review). Their name's sha256 prefix is checked."""
  monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
  cached = _hub_file(tmp_path, 'resnet18', 'IMAGENET1K_V1')  # resnet18-f37072fd.pth
  torch.save(_resnet18_state_dict(0), cached)
  out = tmp_path / 'out'
  rc, err = _run_main(script, capsys, ['--arch', 'resnet18', '--weights', 'IMAGENET1K_V1',
                                       '--output', str(out)])
  found = hashlib.sha256(pathlib.Path(cached).read_bytes()).hexdigest()[:8]
  assert rc == 1 and err.strip().splitlines() == [
      f"error: {cached} in torch hub's cache is not torchvision's IMAGENET1K_V1 weights for "
      f'resnet18 (its sha256 starts {found}, its name says f37072fd): delete it to download them '
      'again, or convert a file of your own with --state_dict FILE'], err
  assert not out.exists() and os.path.isfile(cached)


def test_cached_download_holding_code_is_refused_not_run(script, tmp_path, capsys, monkeypatch):
  monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
  cached = _hashed_hub_file(tmp_path, monkeypatch, {'conv1.weight': _RunsCode(tmp_path / 'pwned')},
                            'resnet18', 'IMAGENET1K_V1')
  rc, err = _run_main(script, capsys, ['--arch', 'resnet18', '--weights', 'IMAGENET1K_V1',
                                       '--output', str(tmp_path / 'out')])
  assert rc == 1 and f'{cached} is not a PyTorch state_dict' in err and 'weights_only' not in err
  assert not (tmp_path / 'pwned').exists(), 'a cached download must not execute pickled code'


def test_script_and_library_know_the_same_architectures(script):
  assert script.ARCHS == convert.ARCHS


# ------------------------------------------------------------------ --output (the library side: test_convert_output.py)
def test_script_overwrite_refuses_a_folder_of_other_files_before_loading(script, tmp_path,
                                                                         capsys):
  path = tmp_path / 'notes'  # A folder of the user's files, not a converter output.
  path.mkdir()
  (path / 'notes.txt').write_text('my thesis')
  rc, err = _run_main(script, capsys, ['--arch', 'resnet18', '--state_dict',
                                       str(tmp_path / 'absent.pth'), '--output', str(path),
                                       '--overwrite'])
  assert rc == 1 and 'notes.txt' in err and len(err.strip().splitlines()) == 1, err
  assert (tmp_path / 'notes' / 'notes.txt').read_text() == 'my thesis'


@pytest.mark.parametrize('where', ['under_a_file', 'deeper_under_a_file',
                                   pytest.param('uncreatable', marks=needs_proc)])
def test_script_refuses_an_output_it_cannot_create_before_loading(script, tmp_path, capsys, where):
  """An output under a file had failed with 'File exists' after loading and converting, an
  unwritable folder only at the write (an audit); the absent --state_dict shows the order."""
  (tmp_path / 'notes.txt').write_text('my thesis')
  out = {'under_a_file': tmp_path / 'notes.txt' / 'r18',
         'deeper_under_a_file': tmp_path / 'notes.txt' / 'a' / 'r18',
         'uncreatable': pathlib.Path('/proc/jax-cifar-no-such-folder/r18')}[where]
  rc, err = _run_main(script, capsys, ['--arch', 'resnet18', '--state_dict',
                                       str(tmp_path / 'absent.pth'), '--output', str(out)])
  assert rc == 1 and len(err.strip().splitlines()) == 1, err
  needle = ('cannot create files in /proc' if where == 'uncreatable'
            else f'{tmp_path / "notes.txt"} is a file, not a folder')
  assert needle in err and 'absent.pth' not in err, err
  assert (tmp_path / 'notes.txt').read_text() == 'my thesis'
  assert sorted(os.listdir(tmp_path)) == ['notes.txt']


@pytest.mark.parametrize('argv, message', [
    (['--state_dict=', '--output', 'OUT'],
     'error: argument --state_dict: is empty: give the .pth file (see --help)'),
    (['--state_dict', 'X', '--output='],
     'error: argument --output: is empty: give the folder to create (see --help)'),
    (['--weights=', '--output', 'OUT'],
     'error: argument --weights: is empty: give a weights name (see --help)'),
    (['--state_dict', 'X', '--weights', 'Y', '--output', 'OUT'],
     'error: argument --weights: not allowed with argument --state_dict (see --help)'),
    (['--arch', 'resnet19', '--state_dict', 'X', '--output', 'OUT'],
     "error: argument --arch: invalid choice: 'resnet19'"),
])
def test_flag_mistakes_are_one_error_line(script, tmp_path, capsys, argv, message):
  """An empty --state_dict had gone to the download and then blamed --weights, an empty --output
  named the current folder, and argparse's mistakes printed its usage block first (a flag
  audit): each is one line now, before anything is read."""
  argv = [a.replace('OUT', str(tmp_path / 'out')) for a in argv]
  if '--arch' not in argv:
    argv = ['--arch', 'resnet18', *argv]
  with pytest.raises(SystemExit) as e:
    script.parse_args(argv)
  err = capsys.readouterr().err
  assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and err.startswith(message), err
  assert not (tmp_path / 'out').exists()


def test_an_output_that_is_a_file_is_named_without_suggesting_overwrite(script, tmp_path, capsys):
  (tmp_path / 'notes.txt').write_text('my thesis')  # --overwrite had been suggested, and refused.
  rc, err = _run_main(script, capsys, ['--arch', 'resnet18', '--state_dict',
                                       str(tmp_path / 'absent.pth'), '--output',
                                       str(tmp_path / 'notes.txt')])
  assert rc == 1 and 'is not a folder but a file or link' in err and '--overwrite' not in err, err
  assert (tmp_path / 'notes.txt').read_text() == 'my thesis'


# ------------------------------------------------------------------ killed mid-write
# Runs the rest of the command line with Python's own Ctrl-C (KeyboardInterrupt): a test run in
# the background of a non-interactive shell (as a CI may start it) inherits SIGINT ignored, and
# a Python started so keeps it ignored. Set by the new process itself, as a preexec_fn would run
# Python in a child forked from this multi-threaded (JAX) process.
_SIGINT_DEFAULT = ('import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); '
                   'os.execv(sys.executable, [sys.executable, *sys.argv[1:]])')


def _convert_in_subprocess(sd_file, out, kill_at: str | None,
                           command=(SCRIPT,)) -> subprocess.CompletedProcess:
  env = dict(os.environ)
  env.pop(KILL_ENV, None)
  if kill_at:
    env[KILL_ENV] = kill_at
  return subprocess.run([sys.executable, '-c', _SIGINT_DEFAULT, *command, '--arch', 'resnet18',
                         '--state_dict', str(sd_file), '--output', str(out), '--overwrite'],
                        capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


@pytest.mark.slow
def test_a_pth_with_damaged_bytes_is_refused_by_its_crc(script, tmp_path, capsys):
  """torch.load does not check the zip's CRCs: a flipped bit in a tensor converted silently into
  wrong weights (an audit)."""
  path = tmp_path / 'r18.pth'
  torch.save(_resnet18_state_dict(0), path)
  with zipfile.ZipFile(path) as archive:
    info = max(archive.infolist(), key=lambda i: i.file_size)  # The largest tensor's bytes.
  data = bytearray(path.read_bytes())
  at = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 1000
  data[at] ^= 0x10
  path.write_bytes(bytes(data))
  out = tmp_path / 'out'
  rc, err = _run_main(script, capsys, ['--arch', 'resnet18', '--state_dict', str(path),
                                       '--output', str(out)])
  assert rc == 1 and f'its member {info.filename} fails its CRC check' in err, err
  assert not out.exists()


@pytest.mark.parametrize('how', ['encrypted', 'compression_99'])
def test_a_pth_zip_with_features_torch_never_writes_is_one_line(script, tmp_path, capsys, how):
  """An encrypted member (RuntimeError) or an unknown compression method (NotImplementedError)
  had escaped the zip check as a traceback (a security audit)."""
  path = tmp_path / 'small.pth'
  torch.save({'fc.weight': torch.zeros(2, 3)}, path)
  data = bytearray(path.read_bytes())
  with zipfile.ZipFile(path) as archive:
    infos = archive.infolist()
  central = data.index(b'PK\x01\x02')  # Each member's header, local (PK34) and central (PK12).
  for sig, flags_at, method_at in ((b'PK\x03\x04', 6, 8), (b'PK\x01\x02', 8, 10)):
    start = 0 if sig == b'PK\x03\x04' else central
    for _ in infos:
      at = data.index(sig, start)
      if how == 'encrypted':
        data[at + flags_at] |= 1
      else:
        data[at + method_at:at + method_at + 2] = (99).to_bytes(2, 'little')
      start = at + 4
  path.write_bytes(bytes(data))
  rc, err = _run_main(script, capsys, ['--arch', 'resnet18', '--state_dict', str(path),
                                       '--output', str(tmp_path / 'out')])
  assert rc == 1 and 'it is a damaged or foreign zip archive' in err, err
  assert len(err.strip().splitlines()) == 1 and not (tmp_path / 'out').exists(), err


def test_a_pth_that_expands_far_beyond_its_size_is_refused_before_torch_load(script, tmp_path,
                                                                            capsys, monkeypatch):
  """torch.save stores its tensors uncompressed: a 1 MB archive of a deflated 1 GiB member had
  taken 1.8 GB of memory in torch.load before its refusal (a security review)."""
  path = tmp_path / 'bomb.pth'
  torch.save({'fc.weight': torch.zeros(2, 3)}, path)
  with zipfile.ZipFile(path, 'a', compression=zipfile.ZIP_DEFLATED) as archive:
    archive.writestr('bomb/data/9', bytes(80 << 20))
  size = path.stat().st_size
  with zipfile.ZipFile(path) as archive:
    expanded = sum(info.file_size for info in archive.infolist())
  def inflated(*_):  # testzip inflates every member: 36 s for 4 GiB (the diff review).
    raise AssertionError('testzip ran before the expansion check')

  monkeypatch.setattr(zipfile.ZipFile, 'testzip', inflated)
  rc, err = _run_main(script, capsys, ['--arch', 'resnet18', '--state_dict', str(path),
                                       '--output', str(tmp_path / 'out')])
  assert rc == 1 and size < 1 << 20 and expanded > 80 << 20, err
  assert (f'it expands to {expanded:,} bytes from {size:,}, and torch.save writes its tensors '
          'uncompressed') in err, err
  assert len(err.strip().splitlines()) == 1 and not (tmp_path / 'out').exists(), err


def test_ctrl_c_during_conversion_is_one_line(script, tmp_path, capsys, monkeypatch):
  """A KeyboardInterrupt had printed a 40-line traceback (an audit)."""
  path = tmp_path / 'r18.pth'
  torch.save(_resnet18_state_dict(0), path)

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(convert, 'torch_to_flax', interrupted)
  out = tmp_path / 'out'
  rc, err = _run_main(script, capsys, ['--arch', 'resnet18', '--state_dict', str(path),
                                       '--output', str(out)])
  assert rc == 130 and err.strip().splitlines()[-1] == (
      f'error: stopped by SIGINT; {out} holds no partial conversion'), err
  assert 'Traceback' not in err and not out.exists()


def test_killed_converter_leaves_no_output_or_the_previous_complete_one(tmp_path):
  inputs, work = tmp_path / 'in', tmp_path / 'work'
  inputs.mkdir()
  work.mkdir()
  old_sd, new_sd = _resnet18_state_dict(0), _resnet18_state_dict(1)
  new_file = inputs / 'new.pth'
  torch.save(new_sd, new_file)
  out = work / 'out'
  kernel = lambda: convert.read_converted(str(out))[1]['conv1.kernel']
  expect_old = old_sd['conv1.weight'].numpy().transpose(2, 3, 1, 0)
  expect_new = new_sd['conv1.weight'].numpy().transpose(2, 3, 1, 0)

  run = _convert_in_subprocess(new_file, out, 'before_rename')  # nothing there before
  assert run.returncode == -signal.SIGKILL, run.stderr
  assert not out.exists()

  convert.save_converted(convert.torch_to_flax(old_sd, 'resnet18'), 'resnet18', str(out))
  run = _convert_in_subprocess(new_file, out, 'before_rename')
  assert run.returncode == -signal.SIGKILL, run.stderr
  np.testing.assert_array_equal(kernel(), expect_old)  # the previous output, whole

  run = _convert_in_subprocess(new_file, out, 'after_rename')
  assert run.returncode == -signal.SIGKILL, run.stderr
  np.testing.assert_array_equal(kernel(), expect_new)  # the new output, whole

  run = _convert_in_subprocess(new_file, out, None)
  assert run.returncode == 0, run.stderr
  np.testing.assert_array_equal(kernel(), expect_new)
  assert os.listdir(work) == ['out'], os.listdir(work)  # killed runs' temp folders cleaned up


@pytest.mark.slow
def test_ctrl_c_while_orbax_commits_waits_for_the_commit_and_leaves_no_temp(tmp_path):
  """A Ctrl-C while the converter waited for orbax's commit interrupted that wait (a thread join):
  orbax's threads went on writing into the temp folder the converter deleted, which stayed, and
  printed about 100 lines of tracebacks at exit (a kill review). The Ctrl-C is now held until the
  commit ends; nothing is published."""
  sd_file, work = tmp_path / 'r18.pth', tmp_path / 'work'
  torch.save(_resnet18_state_dict(0), sd_file)
  work.mkdir()
  run = subprocess.run([sys.executable, '-c', _SIGINT_DEFAULT,
                        os.path.join(REPO, 'tests', '_convert_sigint_in_save.py'), '--arch',
                        'resnet18', '--state_dict', str(sd_file), '--output', str(work / 'out')],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
  lines = run.stderr.strip().splitlines()
  assert run.returncode == 130 and lines[-3:] == [
      'Ctrl-C: stopping once the write under way ends (the next Ctrl-C stops at once)',
      'driver: the commit finished',
      f'error: stopped by SIGINT; {work / "out"} holds no partial conversion'], run.stderr
  assert len(lines) == 5 and 'Traceback' not in run.stderr, run.stderr  # (+ 2 progress lines)
  assert os.listdir(work) == [], os.listdir(work)


@pytest.mark.slow
def test_a_signal_once_the_output_is_in_place_says_it_is_complete(tmp_path):
  """A Ctrl-C during the rename had said 'holds no partial conversion' over a new, complete output
  (and one after 'wrote', during the interpreter's exit, made the finished conversion exit 130):
  the diff review. Every entry point logs the converter's own lines, in one format, ending with
  how to train from the output: orbax's INFO chatter ('Closing _NonBlockingMetadataStore ...',
  through absl) had followed every conversion, and `python -m jax_cifar.convert`'s lines had read
  'INFO:convert:...' (a new-user walkthrough)."""
  sd_file, out = tmp_path / 'r18.pth', tmp_path / 'out'
  torch.save(_resnet18_state_dict(0), sd_file)
  run = _convert_in_subprocess(sd_file, out, 'after_rename:SIGINT')
  assert run.returncode == 130 and run.stderr.strip().splitlines()[-2:] == [
      'Ctrl-C: stopping once the write under way ends (the next Ctrl-C stops at once)',
      f'error: stopped by SIGINT after {out} was written: it holds the new, complete conversion'
  ], run.stderr
  assert convert.read_converted(str(out))[0]['arch'] == 'resnet18'
  # Every entry point reaches the exit's hook (SIGKILL shows it), where a signal no longer changes
  # the status of a finished conversion.
  for command, signals in (((SCRIPT,), ('SIGKILL', 'SIGINT')),
                           (('-m', 'jax_cifar.convert'), ('SIGKILL', 'SIGTERM')),
                           (('-m', 'jax_cifar', 'convert'), ('SIGKILL',))):
    for name in signals:
      run = _convert_in_subprocess(sd_file, out, f'exiting:{name}', command)
      want = -signal.SIGKILL if name == 'SIGKILL' else 0
      assert run.returncode == want and 'Traceback' not in run.stderr, (command, run.stderr)
      lines = run.stderr.strip().splitlines()
      assert [l.split(' ', 2)[2].split(' ', 2)[:2] for l in lines] == [
          ['convert:', 'loaded'], ['convert:', 'converted'], ['convert:', 'wrote']], run.stderr
      assert lines[-1].endswith(  # The converted arch too: the default model is a resnet18 ...
          '; train from it with --config.model.name=resnet18 --config.model.stem=imagenet '
          f'--config.model.normalize=imagenet --config.model.pretrained={out}'), lines
  assert sorted(os.listdir(tmp_path)) == ['out', 'r18.pth']


def test_a_training_run_given_as_converted_weights_points_to_init_from(tmp_path):
  """A run's folder given to load_pretrained (or model.pretrained) had been 'not a converted
  checkpoint (no metadata.json)' with no way on (an audit)."""
  (tmp_path / 'config.json').write_text('{}')
  with pytest.raises(convert.ConversionError, match=(
      rf'^{tmp_path} is not a converted checkpoint \(no metadata.json\): it is a jax-cifar '
      rf'training run; start from its weights with model.init_from={tmp_path}')):
    convert.read_metadata(str(tmp_path))


def test_a_home_relative_state_dict_is_read(script, tmp_path, capsys, monkeypatch):
  """'~/r18.pth' had been "no such file" (from Python or a config file no shell expands it), while
  --output took '~' (a path review)."""
  sd = _resnet18_state_dict(3)
  torch.save(sd, tmp_path / 'r18.pth')
  monkeypatch.setenv('HOME', str(tmp_path))
  rc, err = _run_main(script, capsys, ['--arch', 'resnet18', '--state_dict', '~/r18.pth',
                                       '--output', '~/out'])
  assert rc == 0, err
  np.testing.assert_array_equal(convert.read_converted(str(tmp_path / 'out'))[1]['fc.kernel'],
                                sd['fc.weight'].numpy().T)


def test_a_full_disk_is_one_error_line_without_orbaxs_thread_tracebacks(tmp_path):
  """orbax logged each failed write thread's traceback (`_SignalingThread.run() raised an
  exception`, ~200 lines) above the converter's own error line (a resource review)."""
  torch.save(_resnet18_state_dict(0), tmp_path / 'r18.pth')
  code = ('import resource, signal, sys\nfrom jax_cifar import convert_cli\n'
          'signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n'
          'resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n'
          'sys.exit(convert_cli.main(sys.argv[1:]))\n')
  out = subprocess.run([sys.executable, '-c', code, '--arch', 'resnet18', '--state_dict',
                        str(tmp_path / 'r18.pth'), '--output', str(tmp_path / 'out')],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
  assert out.returncode == 1, out.stderr[-3000:]
  lines = [l for l in out.stderr.splitlines() if 'convert: loaded' not in l
           and 'convert: converted' not in l]
  assert lines == [f'error: writing {tmp_path / "out"} failed: {TOO_LARGE}; '
                   'nothing was written there'], out.stderr[-3000:]
