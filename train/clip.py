"""Train the CLIP (a small open_clip model, contrastive loss), for offline work.

    python train/clip.py --config configs/tiny/clip.yaml --output runs/clip [--resume] [key=value ...]

The same as `unclip train clip ...` (and under `accelerate launch train/clip.py ...`): the stage is
built by `unclip.training.stages.clip` and trained by the shared loop in `unclip.training.loop`.
"""

import sys

from unclip.cli.train import main

if __name__ == "__main__":
    sys.exit(main("clip"))
