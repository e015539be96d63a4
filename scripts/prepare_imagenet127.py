#!/usr/bin/env python
"""Prepare downsampled ImageNet-127 (32 or 64 px) for ulfine; see docs/datasets.md.

Example:
    python scripts/prepare_imagenet127.py --train /data/imagenet/train --val /data/imagenet/val \
        --mapping imagenet127_mapping.txt --out data --size 32
"""

import sys

from ulfine.data.prepare_imagenet127 import main

if __name__ == "__main__":
    sys.exit(main())
