"""``python -m lungjax.serve``: the command line (see the package docstring)."""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from lungjax import xla_cpu
from lungjax.serve import bundle, bundle_format, files, predictions

USAGE_EXIT_CODE = 2  # argparse's own for a bad command line; also a refused bundle


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lungjax.serve",
        description="Classify radiographs with a bundle written by `python -m lungjax.main --mode export`.",
    )
    parser.add_argument("--export", required=True, help="the bundle's folder, <workdir>/export/<step>")
    parser.add_argument("--images", required=True, nargs="+", help="PNG, JPEG or DICOM files, and folders of them")
    parser.add_argument("--out", required=True, help="folder for predictions.csv and predictions.jsonl")
    parser.add_argument("--batch-size", type=int, default=32, help="images per model call (default 32)")
    parser.add_argument(
        "--precision", choices=bundle_format.PRECISIONS, default="float32", help="which model file to run"
    )
    parser.add_argument("--allow-lateral", action="store_true", help="read lateral DICOM films, with a warning")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        predictions.check_out(args.out)  # before any work: a file in the way is a bad command line
    except OSError as err:
        where = f"{err.filename}: " if err.filename and err.filename != args.out else ""
        print(f"lungjax.serve: error: --out {args.out}: {where}{err.strerror}; nothing was written", file=sys.stderr)
        return USAGE_EXIT_CODE
    try:
        xla_cpu.apply_defaults()  # the XLA CPU flags lungjax.main uses, before the bundle starts JAX's backends
        loaded = bundle.load(args.export, args.precision)
    except (xla_cpu.SettingError, bundle.BundleError) as err:
        print(f"lungjax.serve: error: {err}", file=sys.stderr)
        return USAGE_EXIT_CODE
    print(f"lungjax.serve: the model was trained on: {', '.join(loaded.training_sources)}", file=sys.stderr)
    if loaded.label_space:  # a label set: what each output means, once, before the images
        meanings = "; ".join(f"{name}: {definition}" for name, definition in loaded.label_space.items())
        print(f"lungjax.serve: label space: {meanings}", file=sys.stderr)
    paths, skipped = files.expand(args.images)
    if skipped:
        count = f"{len(skipped)} other file{'s' if len(skipped) > 1 else ''}"
        print(f"lungjax.serve: left out {count} (neither PNG, JPEG nor DICOM) found in the folders", file=sys.stderr)
    if not paths:
        print("lungjax.serve: error: no PNG, JPEG or DICOM file among --images", file=sys.stderr)
        return USAGE_EXIT_CODE
    try:
        with tqdm(total=len(paths), unit="image", file=sys.stderr, desc="classifying") as bar:
            failures = predictions.classify(
                loaded,
                paths,
                args.out,
                batch_size=args.batch_size,
                allow_lateral=args.allow_lateral,
                progress=bar.update,
                warn=lambda line: bar.write(f"lungjax.serve: warning: {line}", file=sys.stderr),
            )
    except OSError as err:  # writing the drafts (a full disk): the previous predictions were not touched
        print(
            f"lungjax.serve: error: cannot write the predictions into {args.out} ({err.strerror or err}); the "
            "predictions there before this run are as they were",
            file=sys.stderr,
        )
        return USAGE_EXIT_CODE
    print(
        f"lungjax.serve: {len(paths) - failures} of {len(paths)} images classified, {failures} could not be read; "
        f"see {args.out}/{predictions.CSV_FILE} and {predictions.JSONL_FILE}",
        file=sys.stderr,
    )
    return int(failures > 0)


if __name__ == "__main__":
    sys.exit(main())
