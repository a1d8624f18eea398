"""``--allow-partial``: the one option of the encoder-taking commands that admits a partial load.

Without it a checkpoint that leaves model weights missing is an error listing the keys; with it the
command loads what fits, logs how many tensors were missing and runs. The option's callback scopes
the resolver's process default (:func:`usjepa_fast.models.resolve.partial_loads`) to the one command
invocation: it is entered while the command's arguments are parsed and undone when its context
closes, so the command body needs no code for it.
"""

from __future__ import annotations

from typing import Any

import typer

HELP = (
    "Load a checkpoint that leaves some encoder weights missing (they keep the seeded init; the count is "
    "printed). Default: refuse and list the keys."
)


def _scope_to_command(ctx: typer.Context, value: bool) -> bool:
    from usjepa_fast.models.resolve import partial_loads

    ctx.with_resource(partial_loads(bool(value)))
    return value


def allow_partial_option() -> Any:
    return typer.Option(False, "--allow-partial", help=HELP, callback=_scope_to_command)
