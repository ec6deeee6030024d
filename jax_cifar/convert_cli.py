"""Converts torchvision ResNet/ResNeXt/Wide ResNet weights into `model.pretrained`'s checkpoint.

  python -m jax_cifar.convert --arch resnet50 --weights IMAGENET1K_V2 --output weights/resnet50_v2
  python -m jax_cifar.convert --arch resnet50 --state_dict r50.pth --output out
(`jax-cifar convert ...` and scripts/convert_torchvision_weights.py run the same.)

`.pth` files (also torch hub's cached downloads) are read with torch.load(weights_only=True): a
pickle is code, and a downloaded one must not run. Exits non-zero with a one-line reason on bad
input; never leaves partial output, and --overwrite replaces only a previous converter output.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import logging
import os
import pathlib
import re
import shlex
import signal
import sys
import time
import warnings
import zipfile
from typing import Any, Mapping

from jax_cifar import cli, console_logs, errors

# As jax_cifar.convert.ARCHS (a test keeps them equal); listed here so --help needs no jax.
ARCHS = ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152', 'resnext50_32x4d',
         'resnext101_32x8d', 'resnext101_64x4d', 'wide_resnet50_2', 'wide_resnet101_2')
log = logging.getLogger('convert')
LOG_FORMAT = '%(asctime)s %(name)s: %(message)s'
_ZIP_MAGIC, _PICKLE_MAGIC = b'PK\x03\x04', b'\x80'  # torch.save: zip archive, or legacy pickle


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  as_module = pathlib.Path(sys.argv[0]).parts[-2:] in (('jax_cifar', 'convert.py'),  # python -m
                                                        ('jax_cifar', 'convert_cli.py'))
  parser = cli.ArgumentParser(prog=cli.prog('jax_cifar.convert' if as_module else None),
                                   description=__doc__.splitlines()[0])
  parser.add_argument('--arch', required=True, choices=ARCHS)
  source = parser.add_mutually_exclusive_group(required=True)
  # Empty values are refused: --output= had meant the current folder, --state_dict= a download.
  source.add_argument('--state_dict', type=cli.nonempty('the .pth file'),
                      help='a torchvision state_dict saved with torch.save')
  source.add_argument('--weights', type=cli.nonempty('a weights name'),
                      help='torchvision weights name, e.g. IMAGENET1K_V1 (online)')
  parser.add_argument('--output', required=True, type=cli.nonempty('the folder to create'),
                      help='checkpoint directory to create')
  parser.add_argument('--overwrite', action='store_true',
                      help='replace an existing --output written by this converter')
  return parser.parse_args(argv)


class NotAStateDict(errors.UserError, ValueError):
  """The file is not a PyTorch state_dict; the message says what it is instead."""

  def __init__(self, path: str, why: str):
    super().__init__(f'{path} is not a PyTorch state_dict (a mapping of parameter names to '
                     f'tensors): {why}')


def _a(thing: Any) -> str:
  name = type(thing).__name__
  return f'{"an" if name[:1].lower() in "aeiou" else "a"} {name}'


# Lines of torch.load's error text that advise loading unsafely (or are noise): never repeated.
_ADVICE = ('weights_only', 'weights only', 'safe_globals', 'trust', 'documentation',
           'file an issue')


def _why_unreadable(error: Exception) -> str:
  """Why torch.load failed, in our words: torch's text advises unpickling unsafely, never echoed."""
  text = str(error)
  found = re.search(r'GLOBAL ([\w.]+)', text)
  if found and found.group(1).split('.')[0] == 'numpy':  # Arrays, yet refused like any object.
    return ('it holds numpy arrays, which loading without running code does not take; save torch '
            'tensors: torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, FILE)')
  if found:
    return (f'it pickles the Python object {found.group(1)}, which would run code on loading '
            '(and is not run); save only model.state_dict() with torch.save')
  if isinstance(error, EOFError):
    return 'it is not a complete file written by torch.save (truncated?)'
  lines = [l.strip() for l in re.sub(r'WeightsUnpickler error:', '\n', text).splitlines()]
  detail = [l for l in lines if l and not any(a in l.lower() for a in _ADVICE)]
  return (f'it is not a file written by torch.save of tensors '
          f'({detail[0][:160] if detail else type(error).__name__})')


# Keys under which training checkpoints commonly hold the model's state_dict: Lightning and many
# scripts ('state_dict'), PyTorch's tutorial on saving a general checkpoint ('model_state_dict').
_WRAPPER_KEYS = ('state_dict', 'model_state_dict', 'model')


def _tensor_mappings(obj: Mapping) -> list[str]:
  """Keys of `obj` whose values are non-empty mappings of names to tensors."""
  return [repr(k) for k, v in obj.items() if isinstance(v, Mapping) and v
          and all(hasattr(t, 'shape') for t in v.values())]


def _unwrap(obj: Any, path: str) -> Mapping[str, Any]:
  """Accepts a bare state_dict or a checkpoint holding it under one of _WRAPPER_KEYS."""
  for key in _WRAPPER_KEYS:
    if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
      obj = obj[key]
  if not isinstance(obj, Mapping):
    raise NotAStateDict(path, f'it holds {_a(obj)}')
  if not obj:
    raise NotAStateDict(path, 'it holds no tensors (an empty mapping)')
  for key, value in obj.items():
    if not isinstance(key, str):
      raise NotAStateDict(path, f'its key {key!r} is not a name')
    if not hasattr(value, 'shape'):  # torch.Tensor or numpy array
      nested = _tensor_mappings(obj)
      raise NotAStateDict(path, f'{key!r} holds {_a(value)}, not a tensor' + (
          f'; the tensors seem to be under {" or ".join(nested)}: save that mapping alone with '
          'torch.save' if nested else ''))
  return obj


def _is_safetensors(path: str) -> bool:
  """A safetensors file: an 8-byte little-endian header length, then that much JSON."""
  size = os.path.getsize(path)
  with open(path, 'rb') as f:
    head = f.read(9)
  return (len(head) == 9 and head[8:] == b'{'
          and 0 < int.from_bytes(head[:8], 'little') <= size - 8)


def _refuse_expanding(path: str, archive: zipfile.ZipFile) -> None:
  """torch.save stores its tensors uncompressed, so its archives are about their files' size; a
  1 MB one of 1 GiB had taken 1.8 GB of memory before its refusal, and a 4 MB one of 4 GiB 36 s of
  inflating (a security review and its diff review)."""
  expanded, size = sum(info.file_size for info in archive.infolist()), os.path.getsize(path)
  if expanded > 2 * size + (64 << 20):
    raise NotAStateDict(path, f'it expands to {expanded:,} bytes from {size:,}, and torch.save '
                        'writes its tensors uncompressed: a compressed copy of a checkpoint, or '
                        'not one (load it with torch.load and torch.save it again)')


def read_state_dict_file(path: str) -> Mapping[str, Any]:
  """Loads a state_dict saved with torch.save, running no pickled code; errors say what it is."""
  import torch  # pylint: disable=import-outside-toplevel
  with open(path, 'rb') as f:
    head = f.read(4)
  if not head:
    raise NotAStateDict(path, 'the file is empty')
  if not head.startswith((_ZIP_MAGIC, _PICKLE_MAGIC)):
    if _is_safetensors(path):
      raise NotAStateDict(path, 'it is a safetensors file, not torch.save\'s: save it as one with '
                          'torch.save(safetensors.torch.load_file(FILE), FILE.pth) (pip install '
                          'safetensors) and convert that')
    raise NotAStateDict(path, f'it is not a file written by torch.save (it starts with {head!r}, '
                        'neither a zip archive nor a pickle)')
  if head.startswith(_ZIP_MAGIC) and not zipfile.is_zipfile(path):
    raise NotAStateDict(path, 'it is not a complete file written by torch.save (a truncated zip '
                        'archive)')
  if head.startswith(_ZIP_MAGIC):  # torch.load does not check the CRCs: damaged bytes converted.
    try:
      with zipfile.ZipFile(path) as archive:
        _refuse_expanding(path, archive)  # (Before testzip, which inflates every member.)
        damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError) as e:
      # (RuntimeError: an encrypted member; NotImplementedError: a compression torch never
      # writes. Both had been tracebacks: a security audit.)
      raise NotAStateDict(path, f'it is a damaged or foreign zip archive ({e})') from None
    if damaged:
      raise NotAStateDict(path, f'its member {damaged} fails its CRC check (damaged bytes: copy '
                          'or download the file again)')
    with zipfile.ZipFile(path) as archive:
      names = archive.namelist()
    if any(n.endswith('/constants.pkl') or '/code/' in n for n in names):
      raise NotAStateDict(path, 'it is a TorchScript model (torch.jit.save): save its weights with '
                          'torch.save(torch.jit.load(FILE).state_dict(), FILE.pth) and convert that')
    if names and all(n.endswith('.npy') for n in names):
      raise NotAStateDict(path, 'it is a numpy .npz archive: save torch tensors instead, '
                          'torch.save({k: torch.from_numpy(v) for k, v in np.load(FILE).items()}, '
                          'FILE.pth)')
  try:
    with warnings.catch_warnings():  # torch's notes on unusual pickles advise filing issues:
      warnings.simplefilter('ignore', UserWarning)  # what matters is said below, or nothing.
      # argparse.Namespace: the 'args' that torchvision's and timm's training scripts save beside
      # the weights (a plain attribute holder; its values still go through weights_only's checks).
      with torch.serialization.safe_globals([argparse.Namespace]):
        obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except  # any unreadable or unsafe content
    raise NotAStateDict(path, _why_unreadable(e)) from None  # torch's advice is not repeated
  return _unwrap(obj, path)


def _weights_url(arch: str, name: str) -> str:
  import torchvision  # pylint: disable=import-outside-toplevel
  enum = torchvision.models.get_model_weights(arch)
  if name not in enum.__members__:
    raise errors.ConfigError(f'--weights {name}: {arch} has {", ".join(enum.__members__)}')
  return enum[name].url


def _check_cached(path: str, prefix: str, what: str) -> None:
  """A file already in torch hub's cache is checked against the sha256 prefix in its name, as a
  download is: torch.hub trusts a cached file, so another file under that name (a copy of other
  weights, a damaged download) had been converted as `what` without a word (a review)."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 22), b''):
      digest.update(block)
  if not digest.hexdigest().startswith(prefix):
    raise errors.UserError(
        f'{path} in torch hub\'s cache is not {what} (its sha256 starts '
        f'{digest.hexdigest()[:len(prefix)]}, its name says {prefix}): delete it to download '
        'them again, or convert a file of your own with --state_dict FILE')


def _download(arch: str, name: str) -> str:
  """Path of torchvision's `name` weights for `arch` in torch hub's cache, downloaded if absent
  (and checked against the hash in its name if present)."""
  import torch  # pylint: disable=import-outside-toplevel
  url = _weights_url(arch, name)
  cached = os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(url))
  digest = torch.hub.HASH_REGEX.search(os.path.basename(url))
  if os.path.isfile(cached) and digest:
    _check_cached(cached, digest.group(1), f"torchvision's {name} weights for {arch}")
  if not os.path.isfile(cached):
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    try:  # into a temp file, renamed once the hash prefix in the name is verified
      torch.hub.download_url_to_file(url, cached, digest.group(1) if digest else None,
                                     progress=True)
    except OSError as e:  # URLError, socket errors: no internet
      raise errors.UserError(f'cannot download {url} ({e}); offline, download it elsewhere and pass '
                       '--state_dict FILE.pth') from e
    except RuntimeError as e:  # the hash check
      raise errors.UserError(f'download of {url} is corrupt: {e}') from e
  return cached


def load_state_dict(args: argparse.Namespace) -> tuple[Mapping[str, Any], str]:
  """(state_dict, where it came from) for --state_dict FILE or --weights NAME."""
  if args.state_dict:  # ('~/r50.pth' from Python or a config file, where no shell expands it.)
    args.state_dict = os.path.expanduser(args.state_dict)
  if args.state_dict and os.path.isdir(args.state_dict):
    raise errors.ConfigError(f'--state_dict {args.state_dict} is a folder; give the .pth file')
  if args.state_dict and not os.path.isfile(args.state_dict):
    raise errors.ConfigError(f'--state_dict {args.state_dict}: no such file')
  _check_torch(need_torchvision=not args.state_dict)
  path = args.state_dict or _download(args.arch, args.weights)
  return read_state_dict_file(path), os.path.abspath(path)


def _check_torch(need_torchvision: bool) -> None:
  """torch reads the checkpoint (and torchvision names --weights): they are the `convert` extra,
  not jax-cifar's own dependencies, and their absence had been a ModuleNotFoundError traceback
  (a review)."""
  missing = [m for m in ('torch',) + (('torchvision',) if need_torchvision else ())
             if importlib.util.find_spec(m) is None]
  if missing:
    why = 'read the torch checkpoint' + (" and find torchvision's weights" if need_torchvision
                                         else '')
    raise errors.UserError(
        f"the converter needs {' and '.join(missing)} to {why}, and they are not installed: "
        "pip install 'jax-cifar[convert]' (in a source tree: pip install -e '.[convert]')")


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  # Our progress at INFO; the libraries' INFO chatter (orbax's metadata-store lines) stays hidden.
  logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT, stream=sys.stderr)
  log.setLevel(logging.INFO)
  console_logs.hide_orbax_logs()
  from jax_cifar import convert  # pylint: disable=import-outside-toplevel  (jax: after --help)
  written = False
  try:
    from jax_cifar import workdir  # pylint: disable=import-outside-toplevel  (flax: after --help)
    out = os.path.abspath(workdir.expanded(args.output))  # ('~/w' as save_converted reads it.)
    convert.check_output(out, args.overwrite, hint='pass --overwrite')
    t = time.time()
    state_dict, source = load_state_dict(args)
    log.info('loaded %d tensors from %s (%.1fs)', len(state_dict), source, time.time() - t)
    t = time.time()
    variables = convert.torch_to_flax(state_dict, args.arch)
    log.info('converted to %s layout (%.1fs)', args.arch, time.time() - t)
    t = time.time()
    convert.save_converted(variables, args.arch, args.output, source=source,
                           overwrite=args.overwrite)
    written = True
    log.info('wrote %s (%.1fs); train from it with --config.model.name=%s '
             '--config.model.stem=imagenet --config.model.normalize=imagenet '
             '--config.model.pretrained=%s', args.output, time.time() - t, args.arch,
             shlex.quote(out))
  except KeyboardInterrupt as e:  # Ctrl-C: one line (save_converted writes a temp folder it renames).
    if written or isinstance(e, convert.InterruptedAfterWrite):
      print(f'error: stopped by SIGINT after {args.output} was written: it holds the new, complete '
            'conversion', file=sys.stderr)
    else:
      print(f'error: stopped by SIGINT; {args.output} holds no partial conversion',
            file=sys.stderr)
    return 130
  except Exception as e:  # pylint: disable=broad-except
    message = errors.user_message(e)
    if message is None:
      raise  # A bug keeps its traceback.
    print(f'error: {message}', file=sys.stderr)
    return 1
  return 0


def run_as_command(argv: list[str] | None = None) -> None:
  """`python -m jax_cifar.convert`, `jax-cifar convert` and scripts/convert_torchvision_weights.py:
  `main()`, then the exit. A conversion written and said so ends at once with status 0: a signal
  during the interpreter's exit had made it 130 or 143 (a kill review), and Python gives the
  signals back to their defaults before it tears the libraries down (the diff review)."""
  # A command owns the root logger: under `python -m jax_cifar.convert` the libraries imported
  # first had set it up, and its lines read 'INFO:convert:...' (a new-user walkthrough). Not in
  # main(), which Python code and tests call in their own process and its logging.
  logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT, stream=sys.stderr, force=True)
  status = main(argv)
  if status == 0:
    for sig in (signal.SIGINT, signal.SIGTERM):
      signal.signal(sig, signal.SIG_IGN)
    from jax_cifar import atomic_folder, converted  # pylint: disable=import-outside-toplevel
    atomic_folder.kill_point(converted.KILL_ENV, 'exiting')
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # pylint: disable=protected-access  (the output is whole and fsynced)
  sys.exit(status)


if __name__ == '__main__':  # python -m jax_cifar.convert_cli, as jax_cifar.convert: it had
  run_as_command()  # exited 0 without a word, converting nothing (a flag audit).
