"""Runs N copies of a JAX command on this machine as one multi-process JAX job (coordinator on 127.0.0.1).

  python scripts/launch_local.py --num_processes 2 --cpu_devices 2 -- \
      python -m jax_cifar.train --config configs/smoke.py --workdir runs/mp

Each copy gets JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID, which
`jax_cifar.parallel.maybe_initialize_distributed()` hands to `jax.distributed.initialize()`; with
--cpu_devices it also runs on the CPU with that many devices per process (gloo collectives), and
without it each copy gets its own GPUs (--gpus_per_process, 1 by default: JAX_LOCAL_DEVICE_IDS,
split from the caller's JAX_LOCAL_DEVICE_IDS where that is set; not for TPUs, whose hosts run one
process each). It is
the same code path as a SLURM or TPU-pod job, so it tests multi-host behaviour on one machine.
Output lines are prefixed with [pI]. SIGTERM/SIGINT are forwarded to every copy, once: each copy
runs in a process group of its own, so a terminal's Ctrl-C reaches it only through this launcher
(in the terminal's group too, it had got two SIGINTs, and jax_cifar's second-signal rule then
stopped it without saving). A hang-up is forwarded as SIGTERM (save and stop). If one copy fails,
the others are stopped. The exit status is the first non-zero one (or 0).
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def gpu_pool(base: dict, num: int, gpus_per_process: int) -> list[str]:
  """The GPU ids the copies share out: the caller's JAX_LOCAL_DEVICE_IDS (it had been overwritten
  silently, so `JAX_LOCAL_DEVICE_IDS=4,5,6,7` ran on GPUs 0-3), else 0 .. num*gpus_per_process-1.
  ValueError when the caller's list does not hold exactly that many ids."""
  given = base.get('JAX_LOCAL_DEVICE_IDS', '').strip()
  if not given:
    return [str(d) for d in range(num * gpus_per_process)]
  ids = [d.strip() for d in given.split(',')]
  if (len(ids) != num * gpus_per_process or not all(d.isdigit() for d in ids)
      or len({int(d) for d in ids}) != len(ids)):  # (4,4: two copies on one GPU, a review.)
    raise ValueError(f'JAX_LOCAL_DEVICE_IDS={given} must list {num * gpus_per_process} different '
                     f'GPU ids ({num} processes x --gpus_per_process {gpus_per_process}), '
                     'comma-separated')
  return ids


def process_env(base: dict, index: int, num: int, port: int, cpu_devices: int,
                gpus_per_process: int = 1) -> dict:
  env = dict(base, JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES=str(num),
             JAX_PROCESS_ID=str(index))
  if cpu_devices:
    env.update(JAX_PLATFORMS='cpu', JAX_NUM_CPU_DEVICES=str(cpu_devices),
               JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo')
    # XLA_FLAGS passes through as it is (a user's --xla_dump_to, say): JAX reads a host device
    # count there only where JAX_NUM_CPU_DEVICES is unset.
  elif num > 1:  # GPUs: each copy its own. JAX shows a process every GPU when the coordinator is
    # given by hand (not under SLURM), so every copy had opened them all and the first collective
    # failed in NCCL (a review). JAX reads the variable for GPUs only.
    first = index * gpus_per_process
    pool = gpu_pool(base, num, gpus_per_process)
    env['JAX_LOCAL_DEVICE_IDS'] = ','.join(pool[first:first + gpus_per_process])
  return env


def _pump(proc: subprocess.Popen, prefix: str) -> None:
  for line in proc.stdout:
    sys.stdout.write(f'{prefix} {line}')
    sys.stdout.flush()


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--num_processes', type=int, default=2)
  parser.add_argument('--cpu_devices', type=int, default=0,
                      help='Run on the CPU with this many devices per process (0: default backend).')
  parser.add_argument('--gpus_per_process', type=int, default=1,
                      help='Without --cpu_devices and with several processes: process I drives '
                      'GPUs I*N .. I*N+N-1 (JAX_LOCAL_DEVICE_IDS), or the I-th N of the ids in '
                      'JAX_LOCAL_DEVICE_IDS where that is set (exactly processes x N of them).')
  parser.add_argument('--port', type=int, default=0, help='Coordinator port (0: a free one).')
  parser.add_argument('command', nargs=argparse.REMAINDER, help='-- then the command to run.')
  args = parser.parse_args()
  command = args.command[1:] if args.command[:1] == ['--'] else args.command
  if not command:
    parser.error('give the command after --')
  if args.num_processes < 1:
    parser.error('--num_processes must be at least 1')
  if args.cpu_devices < 0:
    parser.error('--cpu_devices must be 0 (the default backend) or a number of devices')
  if args.gpus_per_process < 1:
    parser.error('--gpus_per_process must be at least 1')
  if not 0 <= args.port <= 65535:
    parser.error('--port must be 0 (a free one) or a port number up to 65535')
  if not args.cpu_devices and args.num_processes > 1:
    try:
      gpu_pool(os.environ, args.num_processes, args.gpus_per_process)
    except ValueError as e:
      parser.error(str(e))
  port = args.port or free_port()
  procs = []
  for i in range(args.num_processes):
    try:
      procs.append(subprocess.Popen(command, env=process_env(os.environ, i, args.num_processes,
                                                             port, args.cpu_devices,
                                                             args.gpus_per_process),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    process_group=0))  # (Signals come from forward() alone.)
    except OSError as e:  # No such command: one line, and no copy left running.
      for p in procs:
        p.kill()
        p.wait()
      print(f'[launch] cannot start {command[0]!r}: {e.strerror}', file=sys.stderr, flush=True)
      return 127 if isinstance(e, FileNotFoundError) else 126
  pumps = [threading.Thread(target=_pump, args=(p, f'[p{i}]'), daemon=True)
           for i, p in enumerate(procs)]
  for t in pumps:
    t.start()

  def forward(signum, _):
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)

  signal.signal(signal.SIGTERM, forward)
  signal.signal(signal.SIGINT, forward)
  signal.signal(signal.SIGHUP, lambda *_: forward(signal.SIGTERM, None))  # (The terminal closed.)
  status = 0
  while [p.poll() for p in procs].count(None):  # Poll every process (any() would stop early).
    failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
    if failed and not status:
      status = failed[0]
      what = ('stopped after saving its step (status 75: relaunch to resume)' if status == 75
              else f'exited with status {status}')  # 75: jax_cifar's preempted exit status.
      print(f'[launch] a process {what}; stopping the others', flush=True)
      forward(signal.SIGTERM, None)
      deadline = time.monotonic() + 30
      while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.2)
      for p in procs:
        if p.poll() is None:
          p.kill()
    time.sleep(0.2)
  for t in pumps:
    t.join()
  code = status or next((p.returncode for p in procs if p.returncode), 0)
  return 128 - code if code < 0 else code  # Killed by signal N: 128 + N, as a shell reports it.


if __name__ == '__main__':
  sys.exit(main())
