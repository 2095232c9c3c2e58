"""Analyses that check the claims C1-C8 of Lin, Sekar & Fanti (NeurIPS 2021) numerically.

One module per claim (``c5_lecun``, ``c6_strict``, ...), each exposing ``CLAIM``,
``TITLE`` and ``run(scale, out, seed=0) -> AnalysisResult``; :mod:`analyses.common`
holds the shared types and helpers, :mod:`analyses.registry` finds the modules.
"""
