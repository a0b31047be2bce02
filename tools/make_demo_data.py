"""Cut the bundled demo set from the CNN study's dataset (run by hand, not at install time).

    python tools/make_demo_data.py ../shared/datasets/masoud brainmri/data/demo

Groups the whole dataset by equal pixels and perceptual-hash distance <= 4 (the grouped
split's rule), then takes the first N files of each class in SHA-256 order such that no
two chosen files share a group and no chosen file's group reaches into the other split: no
demo image has a twin in the demo, and no demo test image has one anywhere in Training.
Files are copied byte for byte under their original names and class folders.
"""

import hashlib
import shutil
import sys
from pathlib import Path

from brainmri.data.groups import duplicate_groups
from brainmri.data.scan import verify_image

PER_SPLIT = {"Training": 40, "Testing": 10}
NEAR = 4

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
paths = sorted(p for p in src.rglob("*.jpg") if not any(part.startswith(".") for part in p.relative_to(src).parts))
digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
verdicts = {p: verify_image(p, perceptual=True) for p in paths}  # the scan's own pixel and perceptual hashes
names = [str(p) for p in paths]
groups = duplicate_groups(
    names,
    {str(p): v[1] for p, v in verdicts.items() if v[1]},
    {str(p): v[2] for p, v in verdicts.items() if v[2] is not None},
    NEAR,
)
group = [groups[n] for n in names]
digest = dict(zip(paths, digests))
group_of = dict(zip(paths, group))
splits_of: dict[int, set[str]] = {}
for p, g in zip(paths, group):
    splits_of.setdefault(g, set()).add(p.relative_to(src).parts[0])
used: set[int] = set()
for split, n in PER_SPLIT.items():
    for class_dir in sorted(d for d in (src / split).iterdir() if d.is_dir() and not d.name.startswith(".")):
        files = []
        for p in sorted((p for p in class_dir.iterdir() if p in group_of), key=digest.get):
            g = group_of[p]
            if g not in used and splits_of[g] == {split} and len(files) < n:
                files.append(p)
                used.add(g)
        out = dst / split / class_dir.name
        out.mkdir(parents=True, exist_ok=True)
        for p in files:
            shutil.copyfile(p, out / p.name)
        print(split, class_dir.name, len(files))
