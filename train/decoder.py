"""Train the 64×64 decoder (CLIP image embedding + caption → image).

    python train/decoder.py --config configs/tiny/decoder.yaml --output runs/decoder [--resume] [key=value ...]

The same as `unclip train decoder ...` (and under `accelerate launch train/decoder.py ...`): the stage is
built by `unclip.training.stages.decoder` and trained by the shared loop in `unclip.training.loop`.
"""

import sys

from unclip.cli.train import main

if __name__ == "__main__":
    sys.exit(main("decoder"))
