"""Train a brain-MRI tumour classifier.

    accelerate launch launch/train.py recipe=resnet18_512 data.root=/data/brain-tumor-mri
    python launch/train.py recipe=demo                  # one process, bundled demo data
    python launch/train.py --dry-run recipe=cnn3_256    # resolved config + model summary

Every ``key=value`` overrides the recipe (see recipes/ and brainmri/config.py). SIGUSR2 or
SIGTERM (a scheduler's warning, ``scancel``) stops every rank at the same step after a
checkpoint of that step; the same command with ``resume=auto`` continues from it.
Exit codes: 0 done, 2 bad input (one-line message on stderr), 3 stopped and checkpointed,
4 another rank was lost (its rank, node and last step on stderr).
"""

import os
import signal
import sys
import threading

from brainmri import shell
from brainmri.training import entry
from brainmri.training.distributed import RankLost, TrainingInterrupted

STOPPED, LOST = 3, 4


def main() -> int:
    stop = threading.Event()
    for signum in (signal.SIGUSR2, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    recipes = shell.recipes_beside(__file__)
    try:
        return entry.main(sys.argv[1:], recipes, os.environ, show_progress=sys.stderr.isatty(), stop_event=stop)
    except TrainingInterrupted as e:
        if os.environ.get("RANK", "0") == "0":
            print(f"stopped: {e}", file=sys.stderr)
        return STOPPED
    except RankLost as e:
        print(f"error: {e}", file=sys.stderr)
        return LOST


if __name__ == "__main__":
    sys.exit(main())
