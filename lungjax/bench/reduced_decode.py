"""Decoding a film for a build, reduced against full JPEG decode: images per second on one core.

CheXpert's and MIMIC-CXR-JPG's JPEGs are about 2,500 x 2,000 pixels and are stored at 256: the sources'
builder decodes them at 1/2, 1/4 or 1/8 of their size where libjpeg can (``images.jpeg_reduction``)
instead of decoding every pixel and then throwing 98% of them away. This times the builder's whole
per-film work (``source_builder.stored_film``: read the file, decode, pad to a square, resize, encode the
stored PNG) in this one process, with and without the reduction, on synthetic films of that size
written as JPEGs by OpenCV. The two paths alternate, film by film, so both see the same load; the ratio
is the median of the per-round ratios. The mean absolute difference of the stored films (grey levels)
is reported too.

    python -m lungjax.bench.reduced_decode --films=8 --repeats=5 --stored_size=256
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from absl import app, flags

from lungjax.bench import finish
from lungjax.bench.synthetic_films import synthetic_film
from lungjax.data import images, records, source_builder

FLAGS = flags.FLAGS
flags.DEFINE_integer("films", 8, "Synthetic films written (sizes vary around 2,500 x 2,048).")
flags.DEFINE_integer("repeats", 5, "Rounds over all films per path (medians are reported).")
flags.DEFINE_integer("stored_size", 256, "The stored size the films are decoded for.")
flags.DEFINE_integer("quality", 90, "JPEG quality of the synthetic films.")
flags.DEFINE_string("out", "", "Write the result as JSON here too.")

# Film sizes (height, width) cycled through: CheXpert's and MIMIC's portrait films are 2,000-3,000 tall.
FILM_SIZES = ((2500, 2048), (2828, 2320), (2544, 3056), (2320, 2000))


def stored_film(path: Path, size: int, reduced: bool) -> bytes:
    return source_builder.stored_film(path, size, reduced=reduced)[0]


def main(argv):
    del argv
    size = FLAGS.stored_size
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for k in range(FLAGS.films):
            path = Path(folder) / f"film{k}.jpg"
            film = synthetic_film(*FILM_SIZES[k % len(FILM_SIZES)], seed=k)
            cv2.imwrite(str(path), film, [cv2.IMWRITE_JPEG_QUALITY, FLAGS.quality])
            paths.append(path)
        for path in paths:  # warm the page cache and both code paths
            stored_film(path, size, True), stored_film(path, size, False)
        seconds = {True: [], False: []}
        for _ in range(FLAGS.repeats):
            spent = {True: 0.0, False: 0.0}
            for path in paths:
                for reduced in (True, False):
                    start = time.perf_counter()
                    stored_film(path, size, reduced)
                    spent[reduced] += time.perf_counter() - start
            for reduced, total in spent.items():
                seconds[reduced].append(total)
        differences = [
            float(
                np.abs(
                    records.decode_png(stored_film(path, size, True)).astype(np.float64)
                    - records.decode_png(stored_film(path, size, False))
                ).mean()
            )
            for path in paths
        ]
        reductions = [images.jpeg_reduction(*FILM_SIZES[k % len(FILM_SIZES)][::-1], size) for k in range(len(paths))]
        megabytes = sum(p.stat().st_size for p in paths) / 2**20
    rate = {reduced: [len(paths) / s for s in spent] for reduced, spent in seconds.items()}
    ratios = [full / reduced for full, reduced in zip(seconds[False], seconds[True], strict=True)]
    result = {
        "films": len(paths),
        "film_sizes": [list(FILM_SIZES[k % len(FILM_SIZES)]) for k in range(len(paths))],
        "jpeg_mb": megabytes,
        "quality": FLAGS.quality,
        "stored_size": size,
        "reductions": reductions,
        "reduced_images_per_s": rate[True],
        "full_images_per_s": rate[False],
        "reduced_median_images_per_s": statistics.median(rate[True]),
        "full_median_images_per_s": statistics.median(rate[False]),
        "speedup_median": statistics.median(ratios),
        "mean_abs_difference": differences,
        "cpus": os.cpu_count(),
        "load_average_1m_after": os.getloadavg()[0],
    }
    table = (
        f"{len(paths)} films ~2,500 x 2,048 (JPEG q{FLAGS.quality}, {megabytes:.1f} MB) stored at {size}, one core, "
        f"{FLAGS.repeats} rounds: reduced decode (1/{max(reductions)}) median "
        f"{result['reduced_median_images_per_s']:.1f} images/s, full decode median "
        f"{result['full_median_images_per_s']:.1f} images/s, speed-up median {result['speedup_median']:.2f}x; "
        f"stored films differ by {min(differences):.2f}-{max(differences):.2f} grey levels (mean abs)"
    )
    finish(result, FLAGS.out, table)


if __name__ == "__main__":
    app.run(main)
