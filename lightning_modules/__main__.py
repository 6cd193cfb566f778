"""``python -m lightning_modules``: the ``hamode`` command."""

from .main import main

main()
