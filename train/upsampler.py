"""Train an upsampler: 64→256 or 256→1024, as the config says.

    python train/upsampler.py --config configs/tiny/upsampler_256.yaml --output runs/upsampler [--resume] [key=value ...]

The same as `unclip train upsampler ...` (and under `accelerate launch train/upsampler.py ...`): the stage is
built by `unclip.training.stages.upsampler` and trained by the shared loop in `unclip.training.loop`.
"""

import sys

from unclip.cli.train import main

if __name__ == "__main__":
    sys.exit(main("upsampler"))
