"""One-line errors for the command-line tools: bad input never ends in a bare traceback."""
import os
import sys

from data.coco import DatasetError

from .backbone import PretrainedWeightsError
from .checkpoint import CheckpointError
from .config import ConfigError

USER_ERRORS = (ConfigError, DatasetError, CheckpointError, PretrainedWeightsError, FileNotFoundError)


def run_cli(main):
    """Run `main()`; a user error prints 'error: <message>' on one line and exits with status 2.

    Set FOCALDET_DEBUG=1 to get the full traceback instead.
    """
    try:
        main()
    except USER_ERRORS as error:
        if os.environ.get("FOCALDET_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
