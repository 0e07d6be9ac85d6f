"""Serving: the OpenAI-compatible server (api/, engines/, pipeline.py, server.py), forget
requests (forget/), and the `lethe` command line (cli/). It joins the two libraries: `guard`
(ECO) and `adapters` (APA), entered only through their package surfaces.
"""

import os

# Before torch is imported anywhere (every entry point — `lethe`, the worker module — imports
# this package first): with OpenMP's default busy-wait, torch on 2 vCPUs stalls at random,
# 10-20x slower (DESIGN.md, measured here).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
