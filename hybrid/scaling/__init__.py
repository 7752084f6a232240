"""The recursion scaling study: accuracy against recursion depth and parameter count over a grid of ordinary runs.

`grid` expands a study config into points (override lists for an existing recipe), sets each point's step budget
(equal optimiser steps or equal training FLOPs, counted analytically) and keeps the per-point bookkeeping;
`fit` fits the scaling law and draws the plots. `recipes/scaling_study.py` launches the points as subprocesses.
"""
