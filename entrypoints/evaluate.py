"""MLproject entry point for evaluate: score a model on a split and log the reports (wbc evaluate)."""

import sys

from wbc.__main__ import main

if __name__ == "__main__":
    main(["evaluate", *sys.argv[1:]])
