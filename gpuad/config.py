"""User settings that change what gpuad shows, not what it computes.

`verbose`: show the whole traceback of a gpuad error, numba's and gpuad's own frames included
(default: the message and the user's frames). Set `gpuad.config.verbose = True`, or the
environment variable GPUAD_VERBOSE=1 before importing gpuad.
"""
from __future__ import annotations

import os

verbose: bool = os.environ.get("GPUAD_VERBOSE", "") not in ("", "0")
