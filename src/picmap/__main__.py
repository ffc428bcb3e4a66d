"""``python -m picmap`` runs the command line (also under ``torchrun``)."""

from .cli import main

main()
