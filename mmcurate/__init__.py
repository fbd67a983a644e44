"""mmcurate: curated, audited multimodal training data from image-URL lists."""

__version__ = "0.1.0"

import os as _os

# albumentations (under img2dataset's resizer) asks PyPI for updates at import unless told not to:
# a curation run must not phone out. Ray workers inherit this environment.
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
