"""``--tokens all|scan`` and ``--patch-coverage``: the token selection of the encoder-taking commands.

One definition for ``usfast embed``, ``probe``, ``robustness`` and ``compare``: with ``scan`` only the
patches inside each frame's scan region go through the encoder and the pooled feature averages them
(``usjepa_fast.embed.options.EmbedOptions.tokens``); the values are validated by the library.
"""

from __future__ import annotations

from typing import Any

import typer

TOKENS_HELP = (
    "all (every patch) or scan: only patches inside each frame's scan region (mask file, DICOM region or "
    "detected) go through the encoder; the pooled feature averages them. ViTs only (timm ViTs, usfast students)."
)
COVERAGE_HELP = (
    "With --tokens scan: a patch counts as scan region when at least this share of its pixels is inside "
    "(0.5 default; 0 = any pixel)."
)


def tokens_option() -> Any:
    return typer.Option("all", "--tokens", help=TOKENS_HELP)


def patch_coverage_option() -> Any:
    return typer.Option(0.5, "--patch-coverage", help=COVERAGE_HELP)
