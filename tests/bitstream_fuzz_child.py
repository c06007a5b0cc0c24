"""Decodes every ``*.lic`` file of a folder with :func:`helpers.informative_codec`, one JSON
line per file: ``decoded``, ``refused`` (a ``BitstreamError``, with its message) or
``error`` (anything else, with its traceback). Run by ``test_bitstream_fuzz.py`` in a
child process under a memory limit, so a crash or an allocation above it cannot go unseen.

    python bitstream_fuzz_child.py <folder> <max_pixels>
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import torch
from helpers import informative_codec

from licexp.evaluation.bitstream import BitstreamError
from licexp.evaluation.codec import decode_container


def main(folder: Path, max_pixels: int) -> None:
    torch.set_num_threads(1)
    codec = informative_codec()
    for path in sorted(folder.glob("*.lic")):
        print(json.dumps({"case": path.stem, "outcome": "started"}), flush=True)
        try:
            decode_container(codec, path.read_bytes(), max_pixels=max_pixels)
            outcome = {"outcome": "decoded"}
        except BitstreamError as error:
            outcome = {"outcome": "refused", "message": str(error)}
        except Exception:  # whatever else escapes is what the test reports
            outcome = {"outcome": "error", "message": traceback.format_exc()}
        print(json.dumps({"case": path.stem, **outcome}), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
