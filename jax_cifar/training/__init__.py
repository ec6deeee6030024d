"""The training loop (trainer.py) and its pure, jitted step (train_step.py); a launch's start and
resume (start.py), the checks between launches (relaunch.py), the workdir claim (claim.py) and the
signal handling (stopping.py)."""
