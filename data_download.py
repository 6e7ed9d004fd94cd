#!/usr/bin/env python
"""Download, verify and build the course's data files.

    python data_download.py list
    python data_download.py get starter [--data-dir DIR] [--mirror DIR_OR_URL]
    python data_download.py verify [DATASET ...]

The implementation lives in :mod:`i0t_helpers.download`, so notebooks installed
without this file (for example in Colab) fetch data the same way.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from i0t_helpers.download import (  # noqa: E402  (re-exported for `import data_download`)
    DATASETS,
    DownloadError,
    default_data_dir,
    fetch,
    is_present,
    main,
    verify,
)

__all__ = ["DATASETS", "DownloadError", "default_data_dir", "fetch", "is_present", "main", "verify"]

if __name__ == "__main__":
    sys.exit(main())
