"""The ``figkd`` command line.

Each subcommand lives in its own module under :mod:`figkd.commands` and
exposes a module-level ``COMMAND``; this file only discovers and dispatches
them, so adding a command never touches the others.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from figkd import __version__


@dataclass(frozen=True)
class Command:
    """One ``figkd <name>`` subcommand."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None


def discover_commands() -> dict[str, Command]:
    """Import every module of :mod:`figkd.commands` and collect its ``COMMAND``."""
    import figkd.commands as package

    commands: dict[str, Command] = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        command = getattr(module, "COMMAND", None)
        if isinstance(command, Command):
            commands[command.name] = command
    return dict(sorted(commands.items()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="figkd",
        description="Knowledge distillation toolkit built around FiGKD.",
    )
    parser.add_argument("--version", action="version", version=f"figkd {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for command in discover_commands().values():
        sub = subparsers.add_parser(
            command.name,
            help=command.help,
            description=command.description or command.help,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        command.configure(sub)
        sub.set_defaults(_run=command.run)
    return parser


def looks_like_override(token: str) -> bool:
    """``key=value`` with a dotted config key, as opposed to an option or a path."""
    key, sep, _ = token.partition("=")
    return bool(sep) and not token.startswith("-") and key.replace(".", "_").isidentifier()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``, accepting ``key=value`` overrides anywhere after the command.

    argparse stops filling a ``nargs="*"`` positional at the first option, so
    ``figkd distill cfg.yaml --epochs 1 train.lr=0.1`` would otherwise fail;
    trailing overrides are moved into the command's ``items`` instead.
    """
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        if hasattr(args, "items") and all(looks_like_override(token) for token in extras):
            args.items = [*(args.items or []), *extras]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    from figkd.engine.run_dir import pin_git_commit

    pin_git_commit()  # before the commands load: the commit of the code this process runs
    args = parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError) as error:
        print(f"figkd {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    # Run through the imported module: as ``__main__`` this file's Command class would differ
    # from the one the command modules import, and no command would be found.
    from figkd.cli import main as _main

    sys.exit(_main())
