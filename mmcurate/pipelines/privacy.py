"""Privacy: faces in images (blur, drop or flag) and personal data in captions (redact, drop or flag).

The stage writes the image and caption as they are to be exported: faces blurred, PII replaced
by typed placeholders. Exports, reports and later stages (synthesis) take both from here, so an
original is never exported once this stage has changed it. A kept row that was changed says so
in its ledger `detail`; its face count and boxes and its PII types are in the ledger's scores.
The ledger itself keeps the input caption as given (it is the audit record of the input).
"""

from __future__ import annotations

import pyarrow as pa

from mmcurate.errors import ConfigError
from mmcurate.pipelines.stage import Cluster, Resources, Stage, decisions
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import Config


class PrivacyStage(Stage):
    name = "privacy"
    version = "1"
    output_schema = C.PRIVACY_SCHEMA
    score_columns = (C.FACES, C.FACE_BOXES, C.FACE_ACTION, C.PII_TYPES, C.PII_ACTION)
    input_columns = (C.IMAGE, C.IMAGE_FORMAT)

    def __init__(self, config: Config):
        super().__init__(config)
        # the caption always flows on (redacted or not); the image only when this stage may change it
        self.data_columns = (C.CAPTION,) + ((C.IMAGE, C.IMAGE_FORMAT) if config.privacy.faces.enabled else ())
        self.detector: tuple[str, str] | None = None
        self._faces = None

    @classmethod
    def enabled(cls, config: Config) -> bool:
        return config.privacy.faces.enabled or config.privacy.pii.enabled

    def prepare(self) -> dict:
        f = self.config.privacy.faces
        if not f.enabled:
            return {}
        from mmcurate.filters import faces
        from mmcurate.filters.clip_score import file_sha256

        try:
            self.detector = faces.resolve(f.detector, f.weights)
        except FileNotFoundError as err:
            raise ConfigError(f"privacy.faces.{'weights' if f.weights else 'detector'}: {err}") from None
        kind, path = self.detector
        self._info = {"faces": {"detector": kind, "weights": path, "sha256": file_sha256(path)}}
        return self._info

    def config_sections(self) -> dict:
        p = self.config.privacy
        info = getattr(self, "_info", {})
        return {
            "faces": {**p.faces.model_dump(), "resolved": info.get("faces")} if p.faces.enabled else None,
            "pii": p.pii.model_dump() if p.pii.enabled else None,
        }

    def resources(self, cluster: Cluster) -> Resources:
        return Resources(num_cpus=1, actors=max(1, cluster.cpus)) if self.config.privacy.faces.enabled else Resources()

    def setup(self) -> None:
        f = self.config.privacy.faces
        if f.enabled and self._faces is None:
            from mmcurate.filters.faces import FaceDetector

            if self.detector is None:
                self.prepare()
            self._faces = FaceDetector(*self.detector, min_confidence=f.min_confidence)

    def _faces_of(self, image: bytes, fmt: str | None):
        """(faces, image bytes to store, error)."""
        from mmcurate.filters import faces as F
        from mmcurate.filters.images import decode_rgb, encode

        try:
            rgb = decode_rgb(image)
        except Exception as err:  # noqa: BLE001 - any undecodable image is a failed row
            return [], image, f"cannot decode image: {err}"
        found = self._faces.detect(rgb)
        if found and self.config.privacy.faces.action == "blur":
            return found, encode(F.blur(rgb, found), fmt), None
        return found, image, None

    def process(self, rows: pa.Table) -> pa.Table:
        from mmcurate.filters import pii

        self.setup()
        p = self.config.privacy
        n = rows.num_rows
        captions = rows[C.CAPTION].to_pylist()
        images = rows[C.IMAGE].to_pylist() if p.faces.enabled else [None] * n
        formats = rows[C.IMAGE_FORMAT].to_pylist() if p.faces.enabled else [None] * n
        status, reason, detail = [], [], []
        out_captions, out_images = [], []
        face_counts, face_boxes, face_actions, pii_types, pii_actions = [], [], [], [], []
        for caption, image, fmt in zip(captions, images, formats):
            notes, decision = [], None
            found_faces, stored, error = ([], image, None)
            if p.faces.enabled:
                found_faces, stored, error = self._faces_of(image, fmt)
            spans = pii.find(caption or "", p.pii.phone_regions, p.pii.types) if p.pii.enabled else []
            kinds = sorted({s.kind for s in spans})
            face_action = pii_action = None
            if error:
                decision = (C.FAILED, "undecodable_image", error)
            elif found_faces and p.faces.action == "drop":
                decision = (C.DROPPED, "contains_face", f"{len(found_faces)} face(s) found ({self.detector[0]})")
                face_action = "dropped"
            elif spans and p.pii.action == "drop":
                decision = (C.DROPPED, "contains_pii", f"caption holds {', '.join(kinds)}")
                pii_action = "dropped"
            if decision is None:
                if found_faces:
                    face_action = "blurred" if p.faces.action == "blur" else "flagged"
                    notes.append(f"{len(found_faces)} face(s) {face_action}")
                if spans:
                    pii_action = "redacted" if p.pii.action == "redact" else "flagged"
                    notes.append(f"caption {pii_action}: {', '.join(kinds)}")
                if spans and p.pii.action == "redact":
                    caption = pii.redact(caption, spans)
            status.append(decision[0] if decision else C.KEPT)
            reason.append(decision[1] if decision else None)
            detail.append(decision[2] if decision else ("; ".join(notes) or None))
            out_captions.append(caption)
            out_images.append(stored)
            face_counts.append(len(found_faces) if p.faces.enabled and not error else None)
            face_boxes.append([[f.x1, f.y1, f.x2, f.y2] for f in found_faces] if p.faces.enabled and not error else None)
            face_actions.append(face_action)
            pii_types.append(kinds if p.pii.enabled else None)
            pii_actions.append(pii_action)
        cols = decisions(rows, status, reason, detail)
        cols[C.FACES] = pa.array(face_counts, pa.int16())
        cols[C.FACE_BOXES] = pa.array(face_boxes, pa.list_(pa.list_(pa.int32())))
        cols[C.FACE_ACTION] = pa.array(face_actions, pa.string())
        cols[C.PII_TYPES] = pa.array(pii_types, pa.list_(pa.string()))
        cols[C.PII_ACTION] = pa.array(pii_actions, pa.string())
        cols[C.CAPTION] = pa.array(out_captions, pa.string())
        cols[C.IMAGE] = pa.array(out_images, pa.binary())
        cols[C.IMAGE_FORMAT] = pa.array(formats, pa.string())
        return pa.table(cols, schema=self.output_schema)
