"""MLproject entry point for main: train the default recipe, report on valid, register it as champion if it is the best (wbc main)."""

import sys

from wbc.__main__ import main

if __name__ == "__main__":
    main(["main", *sys.argv[1:]])
