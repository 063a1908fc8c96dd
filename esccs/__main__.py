"""``python -m esccs``: the command line, also the module torchrun starts (``torchrun ... -m esccs train ...``)."""

from esccs.cli import main

if __name__ == "__main__":
    main()
