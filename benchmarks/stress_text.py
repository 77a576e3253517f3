"""Stress benchmark, text: see scresidual/text/_pipeline.py for the data splits.

Run: python benchmarks/stress_text.py [--seeds N]   (results in benchmarks/results/)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stress import main  # noqa: E402

if __name__ == "__main__":
    main("text", "text")
