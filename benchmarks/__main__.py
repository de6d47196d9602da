"""Entry point of ``python -m benchmarks``."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
