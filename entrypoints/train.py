"""MLproject entry point for scratch, transfer and finetune: train one model (wbc train)."""

import sys

from wbc.__main__ import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
