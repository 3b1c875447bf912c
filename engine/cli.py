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
    # When a run stops on an error, the blocks still in flight are cancelled and each says so in a warning;
    # the error line is what the user needs.
    logging.getLogger("distributed.worker.state_machine").setLevel(logging.ERROR)


def _run_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options every pipeline command takes."""

    @click.option(
        "-o", "--output", required=True, type=click.Path(), help="The training store to write (a .zarr folder)."
    )
    @click.option("--seed", type=int, default=0, show_default=True, help="Seed of every random choice of the run.")
    @_cluster_options
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


#: ``--codec``, the same on every pipeline command.
_codec_option = click.option(
    "--codec", type=click.Choice(CODECS), default=None, help="Compression [default: zarrforge.store.codec]."
)


def _cluster_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--cluster``, the SLURM options and ``--config``; the latter two become dask config for the call."""

    @click.option(
        "--cluster",
        default=None,
        help="Where to run: local (default: an embedded LocalCluster), slurm (worker jobs through "
        "dask-jobqueue, settings zarrforge.slurm) or a scheduler address tcp://host:port.",
    )
    @click.option("--jobs", type=int, default=None, help="SLURM worker jobs [default: zarrforge.slurm.jobs].")
    @click.option("--job-name", default=None, help="SLURM job name [default: zarrforge.slurm.job-name].")
    @click.option(
        "-c",
        "--config",
        "config_items",
        multiple=True,
        metavar="KEY=VALUE",
        help="Set zarrforge.KEY for this run, e.g. -c slurm.memory=8GB -c store.codec=zstd (repeatable).",
    )
    @functools.wraps(func)
    def wrapper(
        *args: Any, jobs: int | None, job_name: str | None, config_items: tuple[str, ...], **kwargs: Any
    ) -> Any:
        import dask.config

        from . import config as _config  # noqa: F401  (the defaults, before they are overridden)

        overrides = _config_overrides(config_items)
        if jobs is not None:
            overrides["zarrforge.slurm.jobs"] = jobs
        if job_name is not None:
            overrides["zarrforge.slurm.job-name"] = job_name
        with dask.config.set(overrides):
            return func(*args, **kwargs)

    return wrapper


def _config_overrides(items: tuple[str, ...]) -> dict[str, Any]:
    import yaml

    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().removeprefix("zarrforge.")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: use KEY=VALUE, e.g. slurm.memory=8GB", param_hint="--config")
        try:
            overrides[f"zarrforge.{key}"] = yaml.safe_load(value)
        except yaml.YAMLError:
            overrides[f"zarrforge.{key}"] = value
    return overrides


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
@_codec_option
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
@click.argument("inputs", nargs=-1)
@click.option(
    "--picks",
    "picks",
    multiple=True,
    help="Pick files: file, folder or quoted glob (repeatable) [default: zarrforge.picking.picks].",
)
@_run_options
@click.option("--profile", default=None, help="A sampling profile of zarrforge.picking.profiles (e.g. dense).")
@click.option("--size", type=int, default=None, help="Window side in pixels [default: 128].")
@click.option("--stride", type=int, default=None, help="Step between windows in pixels [default: 64].")
@click.option(
    "--radius", type=float, default=None, help="Positive if a particle center is this close, pixels [default: 20]."
)
@click.option(
    "--negative-ratio", type=float, default=None, help="Share of the other windows kept, 0-1 [default: 0.3]."
)
@click.option("--split", default=None, help="Train,val,test shares of the micrographs [default: 0.8,0.1,0.1].")
@click.option(
    "--mode",
    type=click.Choice(["materialized", "virtual"]),
    default=None,
    help="materialized: store the patches; virtual: store normalized micrographs once [default: materialized].",
)
@click.option("--edges", type=click.Choice(EDGES), default="drop", show_default=True, help="As for patches.")
@click.option("--normalize/--no-normalize", default=None, help="Per-micrograph zero mean, unit std [default: on].")
@click.option("--bin", "bin_", type=int, default=None, help="Average bin×bin pixels first [default: 1].")
@_codec_option
def picking(
    inputs: tuple[str, ...],
    picks: tuple[str, ...],
    output: str,
    seed: int,
    cluster: str | None,
    overwrite: bool,
    quiet: bool,
    profile: str | None,
    size: int | None,
    stride: int | None,
    radius: float | None,
    negative_ratio: float | None,
    split: str | None,
    mode: str | None,
    edges: str,
    normalize: bool | None,
    bin_: int | None,
    codec: str | None,
) -> None:
    """Build a particle-picking training store: labelled windows of micrographs, split by micrograph.

    INPUTS are micrographs (files, folders or quoted globs; default zarrforge.picking.micrographs); --picks are
    RELION .star, crYOLO .cbox, EMAN .box, .coord(s), .csv or Topaz .txt files, matched to micrographs by file
    stem. A window is positive when a particle center is within --radius pixels of its center; every positive
    is kept and a seeded --negative-ratio share of the others. Micrographs without picks give "unlabeled"
    windows. Re-running the same command resumes an interrupted run.
    """
    from .pipelines import run_picking
    from .profiles import picking_settings

    settings = picking_settings(
        profile,
        micrographs=list(inputs) or None,
        picks=list(picks) or None,
        size=size,
        stride=stride,
        radius=radius,
        negative_ratio=negative_ratio,
        split=split,
        mode=mode,
        normalize=normalize,
        bin=bin_,
    )
    summary = run_picking(
        settings.micrographs,
        settings.picks,
        output,
        size=settings.size,
        stride=settings.stride,
        radius=settings.radius,
        negative_ratio=settings.negative_ratio,
        split=settings.split,
        mode=settings.mode,
        edges=edges,  # type: ignore[arg-type]
        normalize=settings.normalize,
        bin=settings.bin,
        seed=seed,
        cluster=cluster,
        overwrite=overwrite,
        codec=codec,
        progress=False if quiet else None,
    )
    click.echo(summary.line())


def _size(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    parts = value.lower().replace("×", "x").split("x")
    try:
        height, width = (int(p) for p in (parts * 2 if len(parts) == 1 else parts))
    except ValueError:
        raise click.BadParameter(f"{value!r}: give HxW, e.g. 256x256", param_hint="--size") from None
    return height, width


@main.command()
@click.argument("data_dir", type=click.Path())
@_run_options
@click.option(
    "--folders",
    default=None,
    help="Comma-separated subfolders of DATA_DIR to ingest [default: every subfolder, or DATA_DIR itself].",
)
@click.option("--size", default=None, help="Resize every image to HxW, e.g. 256x256 (needed if sizes differ).")
@click.option("--pairs", is_flag=True, help="The folders hold the same image names: one array per folder.")
@click.option(
    "--skip-bad", is_flag=True, help="Leave out unreadable or truncated TIFs (counted) instead of failing."
)
@click.option("--split", type=float, default=0.9, show_default=True, help="Train share of the images (seeded).")
@click.option(
    "--val-dir",
    type=click.Path(),
    default=None,
    help="A folder holding the same folders: its images are the val split, all of DATA_DIR's are train.",
)
@click.option(
    "--normalize/--no-normalize",
    default=True,
    show_default=True,
    help="Mask-aware: mean/std of the non-zero pixels, background stays 0; statistics kept per image.",
)
@_codec_option
def images(
    data_dir: str,
    output: str,
    seed: int,
    cluster: str | None,
    overwrite: bool,
    quiet: bool,
    folders: str | None,
    size: str | None,
    pairs: bool,
    skip_bad: bool,
    split: float,
    val_dir: str | None,
    normalize: bool,
    codec: str | None,
) -> None:
    """Ingest folders of TIF images (any sizes, 8/16-bit or float, grey or RGB) into a training store.

    Images are resized to --size (stretched, anti-aliased with scikit-image), colour converted to grey
    (0.2125 R + 0.7154 G + 0.0721 B), multi-page files give one image per page. With --pairs (target and
    condition folders) every folder must hold the same names; a mismatch lists them and writes nothing.
    """
    from .pipelines import run_images

    summary = run_images(
        data_dir,
        output,
        folders=[f.strip() for f in folders.split(",")] if folders else None,
        size=_size(size),
        pairs=pairs,
        split=split,
        val_dir=val_dir,
        normalize=normalize,
        skip_bad=skip_bad,
        seed=seed,
        cluster=cluster,
        overwrite=overwrite,
        codec=codec,
        progress=False if quiet else None,
    )
    click.echo(summary.line())


# ---- tomography: sinograms, stripe pairs, previews (issue 6) ----
def _pair(value: str | None, param: str, cast: Callable[[str], Any] = float) -> tuple[Any, Any] | None:
    """``"A,B"`` or ``"AxB"`` → ``(A, B)``."""
    if value is None:
        return None
    parts = value.lower().replace("×", "x").replace("x", ",").split(",")
    try:
        first, second = (cast(p) for p in parts)
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: give two numbers, e.g. 0,180 or 1801x256", param_hint=param
        ) from None
    return first, second


@main.command()
@click.argument("scan", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="The sinogram store to write.")
@click.option("--flats", default=None, type=click.Path(), help="A file holding the flats (replaces the scan's).")
@click.option("--darks", default=None, type=click.Path(), help="A file holding the darks (replaces the scan's).")
@click.option("--data-path", default=None, help="Path of the frames in the file, if not found by NeXus rules.")
@click.option("--image-key", "image_key_path", default=None, help="Path of the image_key dataset, likewise.")
@click.option("--angles", default=None, help="FIRST,LAST degrees, evenly spaced, for files without angles.")
@click.option("--flat-average", type=click.Choice(["mean", "median"]), default=None, help="[default: mean]")
@click.option("--log", "log_transform", is_flag=True, help="Store -log of the normalized transmission.")
@click.option(
    "--method",
    type=click.Choice(["auto", "slab", "rechunk", "rechunk-tasks", "rechunk-p2p"]),
    default=None,
    help="The projection → sinogram transpose [default: zarrforge.sinograms.method, auto].",
)
@_cluster_options
@click.option("--overwrite", is_flag=True, help="Replace an existing store made with other parameters.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors and the final summary.")
@click.option("-v", "--verbose", count=True, help="More detail, and tracebacks for unexpected errors.")
@_codec_option
def sinograms(
    scan: str,
    output: str,
    flats: str | None,
    darks: str | None,
    data_path: str | None,
    image_key_path: str | None,
    angles: str | None,
    flat_average: str | None,
    log_transform: bool,
    method: str | None,
    cluster: str | None,
    overwrite: bool,
    quiet: bool,
    verbose: int,
    codec: str | None,
) -> None:
    """Normalize a NeXus tomography scan with its flats and darks into a store of sinograms.

    SCAN is a NeXus/HDF5 file (frames split by image_key), or TIF projections (folder, quoted glob or file)
    with --flats, --darks and --angles. Writes sinograms (detector_y, angle, detector_x) float32 with the
    rotation_angle coord in degrees, one band of detector rows per block, read slab by slab straight from the
    scan (zarrforge.sinograms.block-bytes bounds a block's memory). Re-running the same command resumes.
    """
    from .pipelines import run_sinograms

    _configure_logging(verbose, quiet)
    summary = run_sinograms(
        scan,
        output,
        flats=flats,
        darks=darks,
        data_path=data_path,
        image_key_path=image_key_path,
        angles=_pair(angles, "--angles"),
        flat_average=flat_average,  # type: ignore[arg-type]
        log_transform=log_transform,
        method=method,
        cluster=cluster,
        overwrite=overwrite,
        codec=codec,
        progress=False if quiet else None,
    )
    import dataclasses

    import zarr

    rows = zarr.open_array(f"{output}/sinograms", mode="r").shape[0]
    click.echo(dataclasses.replace(summary, samples=rows).line().replace(" samples", " sinograms"))


@main.command()
@click.argument("sinograms", type=click.Path())
@_run_options
@click.option("--patch", default="1801x256", show_default=True, help="ANGLESxCOLUMNS of a patch.")
@click.option("--split", type=float, default=0.9, show_default=True, help="Train share of the sinograms (seeded).")
@click.option("--virtual", is_flag=True, help="Store clean patches only; PairDataset simulates the stripes.")
@click.option("--stripes", "count", default="1,3", show_default=True, help="MIN,MAX simulated stripes per patch.")
@click.option("--width", default="1,10", show_default=True, help="MIN,MAX columns of a simulated stripe.")
@click.option("--contrast", default="0.02,0.2", show_default=True, help="MIN,MAX relative change of a stripe.")
@click.option(
    "--threshold", type=float, default=0.01, show_default=True, help="Detection: least relative stripe contrast."
)
@_codec_option
def stripes(
    sinograms: str,
    output: str,
    seed: int,
    cluster: str | None,
    overwrite: bool,
    quiet: bool,
    patch: str,
    split: float,
    virtual: bool,
    count: str,
    width: str,
    contrast: str,
    threshold: float,
    codec: str | None,
) -> None:
    """Cut sinograms into patches and pair each stripe-free patch with a simulated striped copy.

    SINOGRAMS is a store written by "zarrforge sinograms". Patches where detection finds a real stripe are kept
    apart (group real_artifacts, with their detected masks); the others are "clean" and get a "stripe" partner
    (full, partial, dead and hot stripes, seeded per patch) and its "mask". Whole sinograms go to train or val.
    Re-running the same command resumes an interrupted run.
    """
    from graphs.stripes import DetectParams, StripeParams

    from .pipelines import run_stripes

    summary = run_stripes(
        sinograms,
        output,
        patch=_pair(patch, "--patch", int),  # type: ignore[arg-type]
        split=split,
        virtual=virtual,
        stripe_params=StripeParams(
            count=_pair(count, "--stripes", int),  # type: ignore[arg-type]
            width=_pair(width, "--width", int),  # type: ignore[arg-type]
            contrast=_pair(contrast, "--contrast"),  # type: ignore[arg-type]
        ),
        detect_params=DetectParams(threshold=threshold),
        seed=seed,
        cluster=cluster,
        overwrite=overwrite,
        codec=codec,
        progress=False if quiet else None,
    )
    click.echo(summary.line())


@main.command()
@click.argument("store", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="The PNG file to write.")
@click.option("-n", "n", type=int, default=6, show_default=True, help="Pairs (and real-artifact patches) shown.")
@click.option("--index", type=int, default=None, help="Sinogram store: the detector row shown [default: middle].")
def preview(store: str, output: str, n: int, index: int | None) -> None:
    """Draw a PNG montage: clean/stripe pairs and masks of a pair store, or a sinogram with its stripes."""
    from .preview import preview as draw

    click.echo(draw(store, output, n=n, index=index))


# ---- end of tomography commands ----


@main.command("tensor-tomo")
@click.argument("scan", required=False, type=click.Path())
@_run_options
@click.option(
    "--synthetic",
    type=int,
    default=None,
    metavar="N",
    help="Instead of reconstructing: write a synthetic N×N×N scan with its ground truth to -o (an .h5 file).",
)
@click.option(
    "--synthetic-projections", type=int, default=247, show_default=True, help="Projections of a --synthetic scan."
)
@click.option("--ell-max", type=int, default=8, show_default=True, help="Highest spherical-harmonic order (even).")
@click.option(
    "--num-projections", type=int, default=60, show_default=True, help="Projections drawn per reconstruction."
)
@click.option("--num-samples", type=int, default=100, show_default=True, help="Reconstructions to make.")
@click.option(
    "--regularization", type=float, default=10.0, show_default=True, help="Weight of the Laplacian regulariser."
)
@click.option("--maxiter", type=int, default=20, show_default=True, help="L-BFGS-B iterations at most.")
@click.option("--maxfun", type=int, default=40, show_default=True, help="L-BFGS-B loss evaluations at most.")
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="auto: mumott's CUDA projector where a GPU is found, else the CPU projector.",
)
@click.option("--threads", type=int, default=1, show_default=True, help="numba threads per reconstruction task.")
@_codec_option
def tensor_tomo(
    scan: str | None,
    output: str,
    seed: int,
    cluster: str | None,
    overwrite: bool,
    quiet: bool,
    synthetic: int | None,
    synthetic_projections: int,
    ell_max: int,
    num_projections: int,
    num_samples: int,
    regularization: float,
    maxiter: int,
    maxfun: int,
    device: str,
    threads: int,
    codec: str | None,
) -> None:
    """Reconstruct random projection subsets of a SAXS tensor-tomography scan with mumott into a training store.

    SCAN is an HDF5 file in mumott's layout. Sample k reconstructs the spherical-harmonic coefficients (even orders
    up to --ell-max: 45 for 8) from --num-projections projections drawn with seed [--seed, k], by L-BFGS-B with a
    Laplacian regulariser; one Dask task and one store chunk per sample, so re-running resumes. With --synthetic N
    (and no SCAN), write a synthetic scan with known ground truth to -o instead. Needs zarrforge[mumott].
    """
    from .pipelines import run_tensor_tomo, write_synthetic_scan

    if synthetic is not None:
        if scan is not None:
            raise click.UsageError("give either SCAN or --synthetic N, not both")
        written = write_synthetic_scan(
            output, synthetic, ell_max=ell_max, n_projections=synthetic_projections, seed=seed
        )
        click.echo(
            f"wrote a synthetic {synthetic}³ scan: {written.n_projections} projections of "
            f"{written.projection_shape[0]} × {written.projection_shape[1]} pixels, {written.n_segments} "
            f"segments, ground truth ell_max {ell_max} -> {output}"
        )
        return
    if scan is None:
        raise click.UsageError("give a SCAN file (mumott HDF5), or --synthetic N to make one")
    summary = run_tensor_tomo(
        scan,
        output,
        ell_max=ell_max,
        num_projections=num_projections,
        num_samples=num_samples,
        regularization_weight=regularization,
        maxiter=maxiter,
        maxfun=maxfun,
        device=device,
        threads=threads,
        seed=seed,
        cluster=cluster,
        overwrite=overwrite,
        codec=codec,
        progress=False if quiet else None,
    )
    click.echo(summary.line())


def _ratios(value: str, param: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: give train,val,test shares, e.g. 0.8,0.2,0", param_hint=param
        ) from None


def _levels(value: str | None) -> tuple[int, ...]:
    if not value:
        return ()
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: give level numbers, e.g. 3,4", param_hint="--levels") from None


@main.command()
@click.argument("inputs", nargs=-1)
@_run_options
@click.option("--synthetic", type=int, default=None, help="Generate N procedural objects instead of meshes.")
@click.option("--resolution", type=int, default=64, show_default=True, help="Object grid side (a power of 2).")
@click.option(
    "--min-resolution", type=int, default=4, show_default=True, help="Smallest subvolume side (a power of 2)."
)
@click.option("--split", default="0.8,0.1,0.1", show_default=True, help="Train,val,test shares of the objects.")
@_codec_option
def voxels(
    inputs: tuple[str, ...],
    output: str,
    seed: int,
    cluster: str | None,
    overwrite: bool,
    quiet: bool,
    synthetic: int | None,
    resolution: int,
    min_resolution: int,
    split: str,
    codec: str | None,
) -> None:
    """Voxelize meshes (or procedural shapes) into a hierarchical voxel store, subvolumes stored once per hash.

    INPUTS are mesh files, folders or quoted globs ('meshes/*.stl'; STL, OBJ, PLY, OFF, GLB), solid-filled
    with trimesh; or --synthetic N generates unions of spheres, boxes and tori. Each object is cut into levels
    of subvolumes (--resolution halved down to --min-resolution); equal subvolumes are stored once per level.
    """
    from .pipelines import run_voxels

    if synthetic is None and not inputs:
        raise click.UsageError("give mesh files or --synthetic N")
    summary = run_voxels(
        list(inputs) or None,
        output,
        synthetic=synthetic,
        resolution=resolution,
        min_resolution=min_resolution,
        split=_ratios(split, "--split"),
        seed=seed,
        cluster=cluster,
        overwrite=overwrite,
        codec=codec,
        progress=False if quiet else None,
    )
    click.echo(_store_line(summary, "voxels"))


@main.command()
@click.argument("voxel_store", type=click.Path())
@_run_options
@click.option("--sphere-divisions", type=int, default=2, show_default=True, help="Icosphere subdivisions (views).")
@click.option("--samples-per-view", type=int, default=3000, show_default=True, help="Rays per view and subvolume.")
@click.option(
    "--views-per-subvolume",
    default="1",
    show_default=True,
    help="How many of the views see each subvolume (seeded draw), or 'all'.",
)
@click.option("--adaptive", is_flag=True, help="Aim every second ray at a surface voxel.")
@click.option("--levels", default=None, help="Levels to cast, e.g. 3,4 [default: all].")
@click.option(
    "--backend",
    type=click.Choice(["auto", "numba", "numpy", "torch"]),
    default="auto",
    show_default=True,
    help="Traversal: auto = torch on a CUDA worker, else numba.",
)
@_codec_option
def rays(
    voxel_store: str,
    output: str,
    seed: int,
    cluster: str | None,
    overwrite: bool,
    quiet: bool,
    sphere_divisions: int,
    samples_per_view: int,
    views_per_subvolume: str,
    adaptive: bool,
    levels: str | None,
    backend: str,
    codec: str | None,
) -> None:
    """Cast rays at every unique subvolume of a voxel store (exact voxel traversal) into a rays store.

    Each subvolume is seen from --views-per-subvolume of the views on an icosphere subdivided
    --sphere-divisions times, with --samples-per-view parallel rays per view; each ray stores its origin,
    direction, distance to the first occupied voxel (inf if none) and hit flag.
    """
    from .pipelines import run_rays

    per = None if views_per_subvolume == "all" else int(views_per_subvolume)
    summary = run_rays(
        voxel_store,
        output,
        sphere_divisions=sphere_divisions,
        samples_per_view=samples_per_view,
        views_per_subvolume=per,
        adaptive=adaptive,
        levels=_levels(levels),
        seed=seed,
        backend=backend,  # type: ignore[arg-type]
        cluster=cluster,
        overwrite=overwrite,
        codec=codec,
        progress=False if quiet else None,
    )
    click.echo(_store_line(summary, "rays"))


@main.command()
@click.argument("store", type=click.Path())
@click.option("--ratios", required=True, help="New train,val,test shares of the objects, e.g. 0.8,0.2,0.")
@click.option("--seed", type=int, default=None, help="Seed of the permutation [default: the store's].")
def splits(store: str, ratios: str, seed: int | None) -> None:
    """Reassign a voxel store's objects to train/val/test, without recomputing voxels or rays."""
    from .pipelines import reassign_splits

    counts = reassign_splits(store, _ratios(ratios, "--ratios"), seed=seed)
    click.echo(f"{store}: objects per split " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def _store_line(summary: Any, what: str) -> str:
    """The run's line, in blocks and bytes (voxel and rays stores have no sample axis)."""
    if summary.blocks_written == 0:
        return f"{summary.store}: complete, nothing to do ({summary.blocks_total} blocks)"
    return (
        f"wrote {what}: {summary.blocks_written} blocks ({summary.nbytes / 2**20:.1f} MiB, "
        f"{summary.nbytes_on_disk / 2**20:.1f} MiB on disk) in {summary.seconds:.1f} s -> {summary.store}"
    )


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
@_cluster_options
@click.option("-q", "--quiet", is_flag=True, help="Only errors and the final summary.")
@click.option("-v", "--verbose", count=True, help="More detail.")
def demo(output: str, n: int, shape: int, seed: int, cluster: str | None, quiet: bool, verbose: int) -> None:
    """Generate synthetic micrographs, cut them into a patch store, and train-read it through PyTorch."""
    from .demo import run_demo

    _configure_logging(verbose, quiet)
    run_demo(output, n_micrographs=n, shape=shape, seed=seed, cluster=cluster, echo=click.echo)


@main.command("cluster")
@_cluster_options
@click.option("--cores", type=int, default=None, help="Cores per SLURM job [default: zarrforge.slurm.cores].")
@click.option("--memory", default=None, help="Memory per SLURM job, e.g. 8GB [default: zarrforge.slurm.memory].")
@click.option("--walltime", default=None, help="Per job, e.g. 02:00:00 [default: zarrforge.slurm.walltime].")
@click.option("--queue", default=None, help="SLURM partition [default: zarrforge.slurm.queue].")
@click.option("--account", default=None, help="SLURM account [default: zarrforge.slurm.account].")
@click.option(
    "--job-extra", multiple=True, help="A further sbatch option, e.g. --job-extra=--gres=gpu:1 (repeatable)."
)
@click.option("--dry-run", is_flag=True, help="Print the job script that would be submitted; start nothing.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
@click.option("-v", "--verbose", count=True, help="More detail.")
def cluster(
    cluster: str | None,
    cores: int | None,
    memory: str | None,
    walltime: str | None,
    queue: str | None,
    account: str | None,
    job_extra: tuple[str, ...],
    dry_run: bool,
    quiet: bool,
    verbose: int,
) -> None:
    """Start a cluster and keep it until Ctrl-C; pipelines reach it with --cluster ADDRESS.

    With --cluster slurm (the default here) worker jobs are submitted through dask-jobqueue with the
    zarrforge.slurm settings and these options, and cancelled when this command stops. --dry-run prints the
    job script instead.
    """
    import dask.config

    from .slurm import job_script, slurm_settings

    _configure_logging(verbose, quiet)
    given = {"cores": cores, "memory": memory, "walltime": walltime, "queue": queue, "account": account}
    overrides = {f"zarrforge.slurm.{k}": v for k, v in given.items() if v is not None}
    if job_extra:
        overrides["zarrforge.slurm.job-extra"] = list(job_extra)
    profile = cluster or "slurm"
    with dask.config.set(overrides):
        if dry_run:
            if profile != "slurm":
                raise click.UsageError("--dry-run prints a SLURM job script: use it with --cluster slurm")
            click.echo(job_script(slurm_settings()), nl=False)
            return
        _serve(profile)


def _serve(profile: str) -> None:
    """Start the cluster of ``profile``, print how to reach it, and keep it until Ctrl-C."""
    import time

    from .clusters import connect

    with connect(profile) as client:
        click.echo(f"scheduler: {client.scheduler.address}")
        click.echo(f"dashboard: {client.dashboard_link}")
        click.echo(f"run pipelines with --cluster {client.scheduler.address}; Ctrl-C stops the cluster")
        while True:
            time.sleep(3600)


@main.command("config")
def show_config() -> None:
    """Print zarrforge's effective settings (dask config namespace ``zarrforge``)."""
    from . import config

    click.echo(json.dumps(config.section(), indent=2))


if __name__ == "__main__":  # pragma: no cover
    main()
