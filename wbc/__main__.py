"""``wbc`` and ``python -m wbc``: restart with the tuned allocator first, then import the (heavy) command
line; leave without the interpreter's teardown once it is done."""

from wbc._process import run_and_skip_teardown, tune_malloc_and_reexec


def main(args: list[str] | None = None) -> None:
    tune_malloc_and_reexec()  # before the imports, which a restart would otherwise pay twice

    def run_cli() -> None:
        from wbc.cli import cli

        cli(args=args, prog_name="wbc")

    run_and_skip_teardown(run_cli)


if __name__ == "__main__":
    main()
