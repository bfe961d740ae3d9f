"""``python -m pixazo_batch`` runs the command-line interface."""

from pixazo_batch.cli import main

raise SystemExit(main())
