"""``wbc`` and ``python -m wbc``: restart with the tuned allocator first, then import the (heavy) command line."""

from wbc.runtime import tune_malloc_and_reexec


def main(args: list[str] | None = None) -> None:
    tune_malloc_and_reexec()  # before the imports, which a restart would otherwise pay twice
    from wbc.cli import cli

    cli(args=args, prog_name="wbc")


if __name__ == "__main__":
    main()
