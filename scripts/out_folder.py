"""One output folder per setting, for the measuring scripts (robustness_table, transfer_experiment).

A rerun into the same --out with other settings had resumed interrupted runs under them, or set
finished numbers of the old settings beside new ones, without a word (an audit).
"""

from __future__ import annotations

import json
import pathlib


def check_settings(out: pathlib.Path, now: dict) -> None:
  """Records `now` in OUT/settings.json at the first invocation; a later one with other values is
  refused before anything runs, naming each change."""
  path = out / 'settings.json'
  if not path.exists():
    path.write_text(json.dumps(now, indent=2) + '\n')
    return
  before = json.loads(path.read_text())
  changed = [f'{k} {before.get(k)!r} -> {v!r}' for k, v in now.items() if before.get(k) != v]
  if changed:
    raise SystemExit(f'error: {out} holds runs made with other settings ({"; ".join(changed)}): '
                     'use another --out (or remove that folder)')
