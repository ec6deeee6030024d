"""Runs `python -m MODULE ARGS...`, sending itself SIGNAL when WATCHED is first imported: a Ctrl-C
while a command's libraries load. Usage: _signal_on_import.py MODULE WATCHED SIGNAL ARGS..."""

import importlib.abc
import os
import runpy
import signal
import sys

module, watched, name = sys.argv[1:4]


class _SignalOnImport(importlib.abc.MetaPathFinder):

  def find_spec(self, fullname, path, target=None):  # pylint: disable=unused-argument
    if fullname == watched:
      sys.meta_path.remove(self)
      os.kill(os.getpid(), getattr(signal, name))
    return None


sys.meta_path.insert(0, _SignalOnImport())
sys.argv = [module] + sys.argv[4:]
runpy.run_module(module, run_name='__main__', alter_sys=True)
