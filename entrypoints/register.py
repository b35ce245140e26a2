"""MLproject entry point for register: register the best finished training run, move the champion alias (wbc register)."""

import sys

from wbc.__main__ import main

if __name__ == "__main__":
    main(["register", *sys.argv[1:]])
