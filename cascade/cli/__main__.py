"""``python -m cascade.cli ...``: the same app as the ``cascade`` console script."""

from cascade.cli import app

app()
