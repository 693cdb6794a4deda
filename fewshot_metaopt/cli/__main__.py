"""``python -m fewshot_metaopt.cli``: the same as the ``fewshot-metaopt`` console script."""

from .main import main

raise SystemExit(main())
