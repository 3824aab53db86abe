"""The coordinator and the ``spotrain`` command line: job spec, Ray trainer, run lifecycle."""
