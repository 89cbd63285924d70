"""Train the diffusion prior (caption → CLIP image embedding; data may be `unclip embed` output).

    python train/prior.py --config configs/tiny/prior.yaml --output runs/prior [--resume] [key=value ...]

The same as `unclip train prior ...` (and under `accelerate launch train/prior.py ...`): the stage is
built by `unclip.training.stages.prior` and trained by the shared loop in `unclip.training.loop`.
"""

import sys

from unclip.cli.train import main

if __name__ == "__main__":
    sys.exit(main("prior"))
