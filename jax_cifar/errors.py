"""The one family of errors a user can fix (bad config, data, checkpoint, workdir, submission).

Command-line tools print these as one `error:` line (`user_message`); any other exception is a bug
and keeps its traceback.
"""

from __future__ import annotations

import numpy as np


class UserError(Exception):
  """A problem with the user's input or files, with a message that says what to do."""


class ConfigError(UserError, ValueError):
  """A config value or command-line option that cannot work (named, with what is allowed)."""


def user_message(e: BaseException) -> str | None:
  """The one line a command-line tool prints for `e`, or None if `e` is a bug.

  A UserError prints its message. An OSError from the operating system (a missing file, a
  permission, a full disk) is the user's environment, not a bug: it prints the file and the reason.
  """
  if isinstance(e, UserError):
    return ' '.join(str(e).split('\n'))
  if isinstance(e, OSError) and e.strerror:
    return f'{e.filename}: {e.strerror}' if e.filename else e.strerror
  return None


def positive_int(what: str, value) -> int:
  """`value` as an int if it is a positive integer (numpy's too, never a bool); else ValueError."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f'{what} must be a positive int, got {value!r}')
  return int(value)
