"""``python -m ser_pipeline.cli`` runs the ``ser`` command."""

from ser_pipeline.cli import main

main()
