"""Every DICOM file pydicom ships as its own test data, read the way `classify` reads an upload.

Each file ends in one of three ways: it reads (an image the classifiers can take), it is refused with
medsynth's one-line message (`ImageLoadError`), or it crashes (any other exception: a bug). The files
come from the installed pydicom (``pydicom/data/test_files``), written by others, so nothing is
copied into this repository.

    python benchmarks/dicom_corpus.py --out benchmarks/results/dicom/corpus.json
    python benchmarks/dicom_corpus.py --without-decoders   # as if pylibjpeg & pyjpegls were absent
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

DECODERS = ("pylibjpeg", "libjpeg", "openjpeg", "rle", "jpeg_ls", "gdcm")


def corpus() -> list[Path]:
    import pydicom

    return sorted((Path(pydicom.__file__).parent / "data" / "test_files").glob("*.dcm"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--without-decoders", action="store_true",
                        help="hide the optional pixel-data decoders from pydicom (the state before they were required)")
    parser.add_argument("--out", type=Path, help="write the per-file outcomes as JSON here")
    args = parser.parse_args(argv)
    if args.without_decoders:
        for module in DECODERS:
            sys.modules[module] = None  # import fails: pydicom reports the plugin as unavailable
    from medsynth.errors import ImageLoadError
    from medsynth.io import load_image

    rows = []
    for path in corpus():
        try:
            image = load_image(path, 3)
            rows.append({"file": path.name, "outcome": "read", "shape": list(image.shape)})
        except ImageLoadError as exc:
            rows.append({"file": path.name, "outcome": "refused", "message": str(exc)})
        except Exception as exc:  # noqa: BLE001 - counting crashes is the point
            rows.append({"file": path.name, "outcome": "crash", "message": f"{type(exc).__name__}: {exc}"})
    counts = Counter(r["outcome"] for r in rows)
    summary = {"files": len(rows), **{k: counts.get(k, 0) for k in ("read", "refused", "crash")},
               "without_decoders": args.without_decoders, "rows": rows}
    for r in rows:
        print(f"{r['outcome']:8s} {r['file']:45s} {r.get('message', r.get('shape', ''))}"[:220])
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
