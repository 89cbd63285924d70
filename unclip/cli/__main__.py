"""``python -m unclip.cli``: the ``unclip`` command."""

import sys

from unclip.cli import main

sys.exit(main())
