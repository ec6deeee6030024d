"""How a training run stops on SIGTERM/SIGINT: the handlers set a flag that the loop reads after
each step (save, then `Preempted`), and a second one stops it at once, without saving (`StopNow`);
while the run starts, a first signal stops it before its first step and a second one at once.
Several processes agree before they stop (and wait for the save); a second signal then changes
nothing (one process stopping alone would leave the others in a collective)."""

import os
import signal
import threading

import jax

from jax_cifar import parallel, tracking

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: stopped by a signal after saving; relaunch to resume.
# Seconds between the stop checks of several processes above which a launch is warned: half the
# grace scripts/launch_slurm.sh asks for (--signal=TERM@120), the rest for the save.
SLOW_STOP_S = 60.0


class Preempted(Exception):
  """SIGTERM or SIGINT (a notebook's interrupt, Ctrl-C) stopped training after saving the step it
  names in the log; train_and_evaluate again with the same workdir resumes from it."""


class StopNow(BaseException):
  """A second signal (one process), raised by the handler wherever the main thread is: not an
  Exception, so no `except Exception` on the way (a restore's damaged-step check, a data loader's
  corrupt-file check) mistakes it for a failure; train_and_evaluate turns it into Preempted."""


def install_handlers() -> tuple[dict, dict]:
  """(flag, the handlers it replaced): SIGTERM/SIGINT set the flag, which the loop reads at each
  step; `restore_handlers` puts the process's own back (a notebook's Ctrl-C).

  While the run starts (`flag['starting']`: data, possibly a download, the model, the restore),
  the first signal says that the run will stop once started, and a second one stops it at once
  (nothing is trained yet, so there is nothing to save)."""
  flag = {'signal': None, 'starting': True}
  single, first_process = jax.process_count() == 1, jax.process_index() == 0  # Not in the handler.
  if threading.current_thread() is not threading.main_thread():  # A notebook's background thread:
    # Python runs handlers in the main thread only, and signal.signal() had raised a bare
    # ValueError there (a notebook review). The run trains, and a signal does not stop it.
    tracking.say('note: training in a thread other than the main one: SIGTERM and SIGINT do not '
                 'stop it (Python gives signals to the main thread only)')
    return flag, {}

  def say(message: str) -> None:  # A raw write: the signal may land inside another stderr write.
    if first_process:
      os.write(2, f'\n{message}\n'.encode())

  def handler(signum, _):
    name, first = signal.Signals(signum).name, flag['signal'] is None
    flag['signal'] = name
    if not flag['starting']:
      flag['training_signals'] = flag.get('training_signals', 0) + 1
      if flag['training_signals'] == 1:  # Said at once: the current step (the first one
        say(f'Received {name}: the run saves and stops after '  # compiles, up to a minute) ends first.
            + ('this step (send it again to stop at once, without saving).' if single else
               'the next log step.'))
        return
      if single and flag['training_signals'] == 2:  # Validation or a long run of steps need not
        # be waited for. A save under way is waited for where it has begun writing; one that the
        # signal cut while it started (its first milliseconds) is left as a temp folder that the
        # next launch removes (it had said "is finished" for both: a notebook review).
        say(f'Received {name} again: stopping now, without saving this step (a save already '
            'writing is finished; one cut as it began is removed by the next launch); relaunch '
            'to resume from the last saved checkpoint.')
        raise StopNow(f'{name} again')
      return  # (A third: already stopping.)
    if first or not single:  # Several processes stop together, at the check.
      say(f'Received {name} while starting: the run stops before its first step'
          + (' (send it again to stop at once).' if single else '.'))
      return
    say(f'Received {name} again while starting: stopped; nothing trained, nothing to save.')
    raise StopNow(f'{name} while starting')

  return flag, {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}


def restore_handlers(previous: dict) -> None:
  for sig, handler in previous.items():
    if handler is not None:  # None: installed outside Python, cannot be put back from it.
      signal.signal(sig, handler)


def requested(stop: dict, step: int, log_every: int) -> bool:
  """Whether to stop after `step`. Saving is collective, so with several processes they agree
  (at log steps, one tiny all-gather) and all stop after the same step."""
  if jax.process_count() == 1:
    return stop['signal'] is not None
  return step % log_every == 0 and parallel.any_process(stop['signal'] is not None)


def check_while_starting(stop: dict, resuming: bool) -> None:
  """Raises Preempted if a signal arrived while the run was starting (data, model, restore):
  nothing is trained yet (a resumed step is already saved again), so nothing is saved. Collective
  with several processes."""
  if parallel.any_process(stop['signal'] is not None):
    tracking.say(f"Received {stop['signal'] or 'a signal on another process'} while starting: "
                 f"nothing trained, nothing to save; relaunch to {'resume' if resuming else 'start'}.")
    raise Preempted(stop['signal'] or 'a signal on another process')


def slow_stop_note(log_every: int, batch_size: int, images_per_sec: float,
                   processes: int) -> str | None:
  """The warning of a multi-process run whose stop checks (`requested`, at log steps) are more than
  SLOW_STOP_S apart at its speed: a scheduler's kill after its grace period would then come before
  the save (a multi-host review; nothing had related the two)."""
  apart = log_every * batch_size / images_per_sec if images_per_sec > 0 else 0.0
  if processes < 2 or apart <= SLOW_STOP_S:
    return None
  return (f'with {processes} processes a stop signal (a preemption, a time limit) is acted on at '
          f'log steps: every train.log_every_steps={log_every} steps, {apart:.0f} s apart at this '
          f'speed, more than {SLOW_STOP_S:.0f} s; a scheduler that kills soon after its signal '
          '(scripts/launch_slurm.sh asks for 120 s) can end the run before it saves: lower '
          'train.log_every_steps')

