"""MLproject entry point for predict: classify image files, write a CSV, print the differential count (wbc predict)."""

import sys

from wbc.__main__ import main

if __name__ == "__main__":
    main(["predict", *sys.argv[1:]])
