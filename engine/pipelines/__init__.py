"""Pipelines as the CLI runs them: open sources, build the lazy graph, create the store, write, finalize.

One module per pipeline; each entry point ``run_<pipeline>`` checks everything that can be checked without
reading pixels (files, headers, parameters, the output path) before the output is touched, so bad input never
damages an existing store. :mod:`.common` holds what they share: the store grid and ``write_pipeline``.
"""

from __future__ import annotations

from .common import store_grid, write_pipeline
from .images import run_images
from .patches import run_patches
from .picking import run_picking

__all__ = ["run_images", "run_patches", "run_picking", "store_grid", "write_pipeline"]
