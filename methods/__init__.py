"""The compression methods, which plug into the harness (:mod:`bench`).

Each method imports the harness only through :mod:`bench.api` and is declared in recshrink's
``pyproject.toml`` under the entry-point group ``recshrink.methods``, as a plugin's would be.
Single-file methods are modules here; a method of several files is a package (``lightgnn``,
``legcf``, ``lerg``); what several methods use lives in :mod:`methods.shared`. No method imports
another (``tests/test_architecture.py``).
"""
