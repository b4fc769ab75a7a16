"""Performance scripts (speed, scaling and overhead of the harness): each runs one comparison
and writes CSV + markdown to ``reports/performance/``. See
``reports/performance/README.md`` for the commands and figures. ``gpu_check`` is the exception:
it compares a CUDA device with the CPU and writes one markdown summary (``--out``)."""
