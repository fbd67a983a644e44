"""Privacy: its filters find faces in images (`filters/faces.py`: blur, drop or flag) and personal
data in captions (`filters/pii.py`: redact, drop or flag).

The stage writes the image and caption as they are to be exported: faces blurred, PII replaced
by typed placeholders. Exports, reports and later stages (synthesis) take both from here, so an
original is never exported once this stage has changed it. A kept row that was changed says so
in its ledger `detail`; its face count and boxes and its PII types are in the ledger's scores.
The ledger itself keeps the input caption as given (it is the audit record of the input).
"""

from __future__ import annotations

import pyarrow as pa

from mmcurate.schemas import columns as C
from mmcurate.schemas.config import Config
from mmcurate.stages.base import Cluster, FilterStage, Resources


class PrivacyStage(FilterStage):
    name = "privacy"
    version = "1"
    data_fields = (
        pa.field(C.CAPTION, pa.string()),  # as exported: redacted where PII was found
        pa.field(C.IMAGE, pa.binary()),  # as exported: faces blurred
        pa.field(C.IMAGE_FORMAT, pa.string()),
    )

    def __init__(self, config: Config):
        super().__init__(config)
        # the caption always flows on (redacted or not); the image only when this stage may change it
        self.data_columns = (C.CAPTION,) + ((C.IMAGE, C.IMAGE_FORMAT) if config.privacy.faces.enabled else ())

    def resources(self, cluster: Cluster) -> Resources:
        return Resources(num_cpus=1, actors=max(1, cluster.cpus)) if self.config.privacy.faces.enabled else Resources()
