"""``python -m streamrec.cli``: the same as the ``streamrec`` console script."""

import sys

from streamrec.cli import main

sys.exit(main())
