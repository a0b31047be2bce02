"""Cut the bundled demo set from the Sartaj dataset (run by hand, not at install time).

    python tools/make_demo_data.py ../shared/datasets/sartaj brainmri/data/demo

Takes the first N files of each class in SHA-256 order, skipping any file whose bytes occur
twice anywhere in the dataset (so no demo Testing image leaks from Training), and stores
them resized to 256x256 grayscale-as-RGB JPEG (quality 90) under their original names.
"""

import hashlib
import sys
from collections import Counter
from pathlib import Path

from PIL import Image

PER_SPLIT = {"Training": 40, "Testing": 10}

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
digests = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in src.rglob("*.jpg")}
seen = Counter(digests.values())
for split, n in PER_SPLIT.items():
    for class_dir in sorted((src / split).iterdir()):
        files = sorted((p for p in class_dir.iterdir() if seen[digests[p]] == 1), key=lambda p: digests[p])[:n]
        out = dst / split / class_dir.name
        out.mkdir(parents=True, exist_ok=True)
        for p in files:
            with Image.open(p) as im:
                im.convert("RGB").resize((256, 256), Image.Resampling.BICUBIC).save(out / p.name, quality=90)
        print(split, class_dir.name, len(files))
