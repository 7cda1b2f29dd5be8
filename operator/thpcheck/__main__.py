"""``python -m thpcheck``: the same entry point as the ``thpcheck`` console script."""

from thpcheck.cli.main import main

raise SystemExit(main())
