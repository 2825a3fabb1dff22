"""The repository's own table: one row per stored document, keyed by its XDS uniqueId."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, DateTime, String
from sqlalchemy.orm import Mapped, mapped_column

from clearinghouse.db import Base


class StoredDocument(Base):
    __tablename__ = "repository_document"

    unique_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sha1: Mapped[str] = mapped_column(String(40), nullable=False)
    mime_type: Mapped[str] = mapped_column(String(128), nullable=False)
    store_key: Mapped[str] = mapped_column(String(128), nullable=False, unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False, index=True)
