"""MLproject entry point for shiftbench: score a model under seeded lab-to-lab shifts (wbc shiftbench)."""

import sys

from wbc.__main__ import main

if __name__ == "__main__":
    main(["shiftbench", *sys.argv[1:]])
