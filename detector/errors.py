"""One-line errors for the command-line tools: bad input never ends in a bare traceback."""
import os
import sys


class UserError(Exception):
    """Base of the errors a user can fix (config, dataset, checkpoint, weights): reported as one line.
    Subclasses: detector.config.ConfigError, data.coco.DatasetError, detector.checkpoint.CheckpointError,
    detector.backbone.PretrainedWeightsError."""


# FloatingPointError: a diverged training (non-finite loss), reported with the iteration and the losses.
USER_ERRORS = (UserError, FileNotFoundError, FloatingPointError)


def run_cli(main):
    """Run `main()`; a user error prints 'error: <message>' on one line and exits with status 2.

    Ctrl-C before training starts (or in eval.py) exits with status 130 and one line.
    Set FOCALDET_DEBUG=1 to get the full traceback instead.
    """
    try:
        main()
    except USER_ERRORS as error:
        if os.environ.get("FOCALDET_DEBUG"):
            raise
        print(f"error: {one_line(error)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C outside training's own handler (detector/interrupt.py): nothing to save
        if os.environ.get("FOCALDET_DEBUG"):
            raise
        print("interrupted before training started: nothing was saved", file=sys.stderr)
        sys.exit(130)


def one_line(error):
    """The message of a user error; one raised in a DataLoader worker comes back wrapped in the worker's
    traceback ("Caught DatasetError in DataLoader worker process 0. Original Traceback ..."), whose
    last line is the original 'module.Class: message'."""
    message = str(error).strip()
    if "Original Traceback" in message:
        last = message.splitlines()[-1]
        prefix = f"{type(error).__module__}.{type(error).__name__}: "
        message = last[len(prefix):] if last.startswith(prefix) else last
    return message.splitlines()[0] if message else type(error).__name__
