"""Applications on top of the engine (layer 4, beside ``ulfine.cli``).

Why a package: the demo and the method comparison use the engine the way a user does (only
``ulfine.config.load_config`` and ``ulfine.engine.train``), and the results tables are shared by
them, ``benchmarks/accuracy.py`` and ``scripts/reproduce/``. Nothing below layer 4 imports this
(``ulfine.load`` is resolved by name, on first use, in the package's ``__init__``).

Modules: ``results`` (final_metrics.json -> rows -> mean ± std Markdown/CSV tables; no torch, no
engine), ``compare`` (method specs -> engine runs -> rows), ``plots``, ``demo`` (``run_demo()``,
``ulfine demo``), ``report`` + ``report_plots`` (``ulfine report``), ``run_table`` (``ulfine
compare``), ``classifier`` + ``model_io`` + ``model_card`` (``ulfine.load``, ``ulfine export``),
``onnx_export`` (``--onnx``), ``predict`` (``ulfine predict``). Submodules are imported on use,
so ``import ulfine.apps.results`` stays light.
"""
