"""Performance scripts (issue 8): each runs one comparison and writes CSV + markdown to
``reports/performance/``. See ``reports/performance/README.md`` for the commands and figures."""
