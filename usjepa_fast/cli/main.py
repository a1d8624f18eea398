"""The ``usfast`` command: a typer app whose subcommands live in ``usjepa_fast/cli/<name>.py``.

Each module exposes ``register(app)``; heavy imports (torch, timm, av) happen inside the command
bodies so that ``usfast --help`` and ``usfast --version`` stay instant.
"""

from __future__ import annotations

import importlib
import logging
import signal
import sys

import typer

from usjepa_fast import __version__
from usjepa_fast.errors import EXIT_SIGINT, EXIT_SIGTERM, EXIT_USER_ERROR, Terminated, UsfastError, saved_note

# Order here is the order in `usfast --help`.
COMMAND_MODULES = (
    "doctor",
    "synth",
    "demo",
    "masks",
    "prepare",
    "train",
    "export",
    "embed",
    "probe",
    "robustness",
    "compare",
)

app = typer.Typer(
    name="usfast",
    help="Fast SALT / US-JEPA pretraining, embedding, export and evaluation for ultrasound.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: typer's rich panel shows `<bool>` after every flag
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"usfast {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )


for _name in COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"usjepa_fast.cli.{_name}")
    except ModuleNotFoundError as exc:  # only a missing command module itself is tolerated
        if exc.name != f"usjepa_fast.cli.{_name}":
            raise
        continue
    _module.register(app)


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(signum)


_raise_terminated.usfast_terminates = True  # type: ignore[attr-defined]  # train holds it like SIGINT


def _interrupt_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt / :class:`Terminated` behind typer's ``sys.exit(130)`` (typer turns an
    interrupt into ``Exit(130) from exc`` and exits with it, so it never reaches ``main`` itself)."""
    seen: BaseException | None = exc
    for _ in range(6):
        if seen is None:
            return None
        if isinstance(seen, KeyboardInterrupt):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def main() -> None:
    """Console-script entry point: user errors print one line and exit 2, no traceback; SIGINT and
    SIGTERM commit the finished work (embed, train), say what was saved and exit 130 / 143."""
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        try:
            app()
        except SystemExit as exc:
            interrupt = _interrupt_behind(exc)
            if interrupt is None:
                raise
            raise interrupt from None
    except UsfastError as exc:
        typer.echo(f"usfast: error: {exc}", err=True)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt as exc:
        term = isinstance(exc, Terminated)
        saved = saved_note(exc)
        name = "SIGTERM" if term else "SIGINT"
        typer.echo(f"usfast: interrupted ({name})" + (f": {saved}" if saved else ""), err=True)
        sys.exit(EXIT_SIGTERM if term else EXIT_SIGINT)


if __name__ == "__main__":
    main()
