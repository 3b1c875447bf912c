"""The ``zarrforge`` command line (also ``python -m engine``).

Results go to stdout, progress and logs to stderr. A user error is one line and exit status 1; a usage error is
click's exit status 2.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from graphs.windows import EDGES
from storage.codecs import CODECS
from storage.errors import ZarrforgeError

__all__ = ["main"]

log = logging.getLogger(__name__)

_OUR_LOGGERS = ("engine", "graphs", "storage", "torch_bridge")


class _Group(click.Group):
    """Turn zarrforge errors into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ZarrforgeError as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted; finished blocks are kept: re-run the same command to resume.", err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as e:
            if logging.getLogger("engine").isEnabledFor(logging.DEBUG):
                raise
            click.echo(f"Error: {type(e).__name__}: {e} (run with -v for the traceback)", err=True)
            ctx.exit(1)


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(message)s" if not verbose else "%(levelname)s %(name)s: %(message)s")
    )
    for name in _OUR_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False
    logging.getLogger("distributed").setLevel(logging.ERROR if quiet else logging.WARNING)


def _run_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options every pipeline command takes."""

    @click.option(
        "-o", "--output", required=True, type=click.Path(), help="The training store to write (a .zarr folder)."
    )
    @click.option("--seed", type=int, default=0, show_default=True, help="Seed of every random choice of the run.")
    @click.option(
        "--cluster",
        default=None,
        help="Where to run: local (default: an embedded LocalCluster) or a scheduler address tcp://host:port "
        "(slurm is not available yet).",
    )
    @click.option(
        "--overwrite", is_flag=True, help="Replace an existing store that was made with other parameters."
    )
    @click.option("-q", "--quiet", is_flag=True, help="Only errors and the final summary.")
    @click.option("-v", "--verbose", count=True, help="More detail, and tracebacks for unexpected errors.")
    @functools.wraps(func)
    def wrapper(*args: Any, quiet: bool, verbose: int, **kwargs: Any) -> Any:
        _configure_logging(verbose, quiet)
        return func(*args, quiet=quiet, **kwargs)

    return wrapper


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="zarrforge")
def main() -> None:
    """zarrforge: large imaging data to Zarr training stores and PyTorch Datasets, with Dask.

    Start with "zarrforge demo", then for example "zarrforge patches 'micrographs/*.mrc' -o train.zarr --size
    128 --stride 64" and "zarrforge info train.zarr". Settings live in dask config under "zarrforge" (see
    "zarrforge config").
    """


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@_run_options
@click.option("--size", type=int, required=True, help="Patch side in pixels.")
@click.option("--stride", type=int, default=None, help="Step between patches in pixels [default: --size].")
@click.option(
    "--edges",
    type=click.Choice(EDGES),
    default="drop",
    show_default=True,
    help="drop: windows that do not fit are dropped; pad: reflect-pad bottom/right edges to cover the image.",
)
@click.option(
    "--normalize/--no-normalize", default=False, show_default=True, help="Per-image zero mean, unit std."
)
@click.option("--bin", "bin_", type=int, default=1, show_default=True, help="Average bin×bin pixels first.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "mrc", "tif", "npy", "hdf5"]),
    default="auto",
    show_default=True,
    help="Input reader; auto chooses by file suffix.",
)
@click.option("--dataset", default=None, help="HDF5 dataset path (default for NeXus scans: the projections).")
@click.option(
    "--codec", type=click.Choice(CODECS), default=None, help="Compression [default: zarrforge.store.codec]."
)
def patches(
    inputs: tuple[str, ...],
    output: str,
    seed: int,
    cluster: str | None,
    overwrite: bool,
    quiet: bool,
    size: int,
    stride: int | None,
    edges: str,
    normalize: bool,
    bin_: int,
    fmt: str,
    dataset: str | None,
    codec: str | None,
) -> None:
    """Cut sliding-window patches from images into a training store.

    INPUTS are files, folders or quoted globs ('micrographs/*.mrc'); MRC, TIF, NPY or HDF5/NeXus. Patches of
    each image are stored in row-major order of their top-left corner, images in the order given (globs
    sorted). Re-running the same command resumes an interrupted run.
    """
    from .pipelines import run_patches

    summary = run_patches(
        list(inputs),
        output,
        size=size,
        stride=stride,
        edges=edges,  # type: ignore[arg-type]
        normalize=normalize,
        bin=bin_,
        fmt=fmt,
        dataset=dataset,
        seed=seed,
        cluster=cluster,
        overwrite=overwrite,
        codec=codec,
        progress=False if quiet else None,
    )
    click.echo(summary.line())


@main.command()
@click.argument("store", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def info(store: str, as_json: bool) -> None:
    """Describe a training store: arrays, chunks, codecs, size on disk, progress and provenance."""
    from .report import describe_store

    click.echo(describe_store(store, as_json=as_json))


@main.command()
@click.option(
    "-o",
    "--output",
    default="zarrforge-demo",
    show_default=True,
    type=click.Path(),
    help="Folder for the generated micrographs and the store.",
)
@click.option(
    "--micrographs", "n", type=int, default=8, show_default=True, help="How many micrographs to generate."
)
@click.option("--shape", type=int, default=1024, show_default=True, help="Micrograph side in pixels.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated data and the sampler.")
@click.option("--cluster", default=None, help="Where to run (as for zarrforge patches).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors and the final summary.")
@click.option("-v", "--verbose", count=True, help="More detail.")
def demo(output: str, n: int, shape: int, seed: int, cluster: str | None, quiet: bool, verbose: int) -> None:
    """Generate synthetic micrographs, cut them into a patch store, and train-read it through PyTorch."""
    from .demo import run_demo

    _configure_logging(verbose, quiet)
    run_demo(output, n_micrographs=n, shape=shape, seed=seed, cluster=cluster, echo=click.echo)


@main.command("config")
def show_config() -> None:
    """Print zarrforge's effective settings (dask config namespace ``zarrforge``)."""
    import dask.config

    from . import config as _config  # noqa: F401  (loads the defaults)

    click.echo(json.dumps(dask.config.get("zarrforge"), indent=2))


if __name__ == "__main__":  # pragma: no cover
    main()
