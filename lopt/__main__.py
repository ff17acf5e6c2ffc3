"""``python -m lopt …``: the ``lopt`` command (:mod:`lopt.cli`), where its script is not on PATH."""

import sys

from lopt.cli import main

sys.exit(main())
