"""MLproject entry point for adapt: a model for a lab's own images (wbc adapt)."""

import sys

from wbc.__main__ import main

if __name__ == "__main__":
    main(["adapt", *sys.argv[1:]])
