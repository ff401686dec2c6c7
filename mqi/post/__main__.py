"""``python -m mqi.post BUNDLE_DIR``: post-process one bundle (run by post.sbatch).

Exit 0 when the summary was written, whatever became of the beams (a failed beam is
data); 2 when the bundle is not one (no or invalid manifest.json); 1 when
post-processing itself broke.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from mqi.bundle import MANIFEST_NAME
from mqi.post.run import postprocess_bundle


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mqi.post",
        description="MOQUI output of a bundle -> RT Dose per beam, plan sum, results/summary.json",
    )
    parser.add_argument("bundle_dir", type=Path, help="the bundle root (holding manifest.json)")
    args = parser.parse_args(argv)
    bundle: Path = args.bundle_dir
    if not (bundle / MANIFEST_NAME).is_file():
        print(f"mqi.post: {bundle} is not a bundle: no {MANIFEST_NAME}", file=sys.stderr)
        return 2
    try:
        postprocess_bundle(bundle, log=sys.stdout)
    except ValidationError as err:
        print(
            f"mqi.post: {bundle / MANIFEST_NAME} is invalid: {err.error_count()} problem(s): "
            f"{err.errors()[0]['loc']} {err.errors()[0]['msg']}",
            file=sys.stderr,
        )
        return 2
    except Exception as err:  # one clear line instead of a traceback
        print(f"mqi.post: post-processing of {bundle} failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
