"""Applications on top of the engine (layer 4, beside ``ulfine.cli``).

Why a package: the demo and the method comparison use the engine the way a user does (only
``ulfine.config.load_config`` and ``ulfine.engine.train``), and the results tables are shared by
them, ``benchmarks/accuracy.py`` and ``scripts/reproduce/``. Nothing below layer 4 imports this.

Modules: ``results`` (final_metrics.json -> rows -> mean ± std Markdown/CSV tables; no torch, no
engine), ``compare`` (method specs -> engine runs -> rows), ``plots``, ``demo`` (``run_demo()``,
``ulfine demo``). Submodules are imported on use, so ``import ulfine.apps.results`` stays light.
"""
