"""Which jax-cifar code ran: the package version and a digest of its own source files.

The version string stays the same between releases (0.1.0 throughout development), so it cannot
tell two checkouts apart; the digest of every `.py` file of the package can. Each launch records
it in launches.jsonl (a resume with other code is said), and a stopped evaluation keeps its
predictions only for the same code (an upgrade audit: they had been keyed on the version)."""

import functools
import hashlib
import pathlib


@functools.cache
def code_version() -> str:
  """'<version>+<first 12 hex digits of the sha256 of the package's .py files>'."""
  import jax_cifar  # pylint: disable=g-import-not-at-top  (its __version__ reads the metadata)
  root = pathlib.Path(__file__).resolve().parent
  digest = hashlib.sha256()
  for path in sorted(root.rglob('*.py')):
    digest.update(path.relative_to(root).as_posix().encode() + b'\0' + path.read_bytes() + b'\0')
  return f'{jax_cifar.__version__}+{digest.hexdigest()[:12]}'
