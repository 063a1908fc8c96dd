"""The ``esccs`` command line: one click group; each command imports its heavy modules inside its body.

``esccs --help`` stays instant, and errors that ESCCS raises on purpose print as one line (no traceback).
"""

from __future__ import annotations

import sys

import click

from esccs import __version__
from esccs.errors import EsccsError


class _Group(click.Group):
    """A click group that turns :class:`EsccsError` into a one-line ``Error: ...`` and exit status 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EsccsError as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="esccs")
def cli() -> None:
    """ESCCS: land-cover scene classification under clouds (optical -> optical + SAR transfer).

    \b
    Typical flow:
      esccs data synth data/ --samples 2000      # or point the readers at real SEN12MS / SEN12MS-CR
      esccs data info data/                      # what is in it
      esccs data show data/ --out quicklook.png  # look at it before you trust it
    """


def _register() -> None:
    from esccs.cli import benchmark, data, export, infer, train

    cli.add_command(data.data)
    cli.add_command(train.train)
    cli.add_command(train.evaluate)
    cli.add_command(benchmark.benchmark)
    cli.add_command(export.export)
    cli.add_command(infer.infer)


_register()


def main() -> None:
    """Console-script entry point."""
    sys.exit(cli.main(prog_name="esccs", standalone_mode=True))
