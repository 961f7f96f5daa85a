"""`python -m services.exporter --out DIR [--runtime-check]`: build the model artifacts into DIR."""

from __future__ import annotations

import sys

from services.exporter.export import main

if __name__ == "__main__":
    sys.exit(main())
