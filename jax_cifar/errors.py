"""The one family of errors a user can fix (bad config, data, checkpoint, workdir, submission).

Command-line tools print these as one `error:` line; any other exception is a bug and keeps its
traceback.
"""


class UserError(Exception):
  """A problem with the user's input or files, with a message that says what to do."""
