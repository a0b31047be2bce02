"""Train a brain-MRI tumour classifier.

    accelerate launch launch/train.py recipe=resnet18_512 data.root=/data/brain-tumor-mri
    python launch/train.py recipe=demo                  # one process, bundled demo data
    python launch/train.py --dry-run recipe=cnn3_256    # resolved config + model summary

Every ``key=value`` overrides the recipe (see recipes/ and brainmri/config.py).
Exit codes: 0 done, 2 bad input (one-line message on stderr).
"""

import os
import sys

from brainmri import shell
from brainmri.training import entry

if __name__ == "__main__":
    sys.exit(entry.main(sys.argv[1:], shell.recipes_beside(__file__), os.environ, show_progress=sys.stderr.isatty()))
