"""`python -m jupyter_cma …` is `jupyter cma …`."""

from .cli import main

main()
