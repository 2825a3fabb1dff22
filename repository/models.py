"""The repository's own tables: one row per stored document, keyed by its XDS uniqueId, and the
DICOM instances those documents are (migrations repository_0001 to repository_0003)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from clearinghouse.db import Base

UID_LEN = 64  # a DICOM UID is at most 64 characters (PS3.5 9.1)


class StoredDocument(Base):
    __tablename__ = "repository_document"

    unique_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sha1: Mapped[str] = mapped_column(String(40), nullable=False)
    mime_type: Mapped[str] = mapped_column(String(128), nullable=False)
    store_key: Mapped[str] = mapped_column(String(128), nullable=False, unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False, index=True)
    # How the bytes are stored at rest (repository_0003): "none" (plaintext, documents from before
    # encryption) or a repository.crypto scheme, with the data key wrapped under KEK ``kek_id``.
    encryption: Mapped[str] = mapped_column(String(32), nullable=False, default="none", server_default="none")
    kek_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    wrapped_dek: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


class DicomInstance(Base):
    """A DICOM instance the repository holds as (part of) a stored document, by its UIDs: what
    RAD-69 Retrieve Imaging Document Set asks for (Study, Series, SOP Instance UID)."""

    __tablename__ = "repository_dicom_instance"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    document_unique_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("repository_document.unique_id", ondelete="CASCADE"), nullable=False
    )
    study_uid: Mapped[str] = mapped_column(String(UID_LEN), nullable=False)
    series_uid: Mapped[str] = mapped_column(String(UID_LEN), nullable=False)
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_LEN), nullable=False)
    sop_class_uid: Mapped[str] = mapped_column(String(UID_LEN), nullable=False)
    transfer_syntax_uid: Mapped[str] = mapped_column(String(UID_LEN), nullable=False)

    __table_args__ = (
        Index("ix_repository_dicom_instance_sop", "sop_instance_uid"),
        Index("ix_repository_dicom_instance_document", "document_unique_id"),
    )
