"""``python -m unirobust`` (and ``torchrun -m unirobust eval ...``): the command line."""

from unirobust.cli import main

if __name__ == "__main__":
    main()
