"""Command line: train and profile the GPT trainer, analyse and compare profiler traces."""

from __future__ import annotations

import sys

import typer

from tracekit.errors import UserError
from trainer.errors import TrainerError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train and profile a modded-nanogpt-style GPT; find why its steps are slow.",
)


def _register_commands() -> None:
    from tracekit.commands import analyze, diff, timeline
    from trainer import commands as trainer_commands

    trainer_commands.register(app)
    analyze.register(app)
    timeline.register(app)
    diff.register(app)


def main() -> None:
    _register_commands()
    try:
        app()
    except (UserError, TrainerError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
