"""``python -m unclip``: the ``unclip`` command (e.g. under ``accelerate launch -m unclip train …``)."""

import sys

from unclip.cli import main

sys.exit(main())
