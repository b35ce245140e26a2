"""MLproject entry point for compare: the course study as one MLflow run with a child run per model (wbc compare)."""

import sys

from wbc.__main__ import main

if __name__ == "__main__":
    main(["compare", *sys.argv[1:]])
