"""`python -m services.cli`: the `zerolens` command where only the code is installed (the web image)."""

import sys

from services.cli import main

sys.exit(main())
