"""Declarative base shared by every bounded context's models."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar, cast

from sqlalchemy import DateTime, MetaData, TypeDecorator, Uuid
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, configure_mappers, mapped_column

from carnet.kernel.ids import new_id

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on both SQLite (which drops tzinfo) and PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UtcDateTime column")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dt.datetime: UtcDateTime(), uuid.UUID: Uuid()}


class IdMixin:
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)


M = TypeVar("M", bound=Base)


def detached(model: type[M], values: Mapping[str, Any]) -> M:
    """An instance of `model` holding a row read by a Core statement (`values` by attribute
    name), as the ORM's loading fills one: no constructor, no change events, no pending
    changes, in no session. A sixteenth of `model(**values)`'s cost on a hot read; for reading
    only (a write goes through the ORM's own query)."""
    manager = _managers.get(model)
    if manager is None:
        configure_mappers()  # as the model's constructor would, on first use
        manager = _managers[model] = sa_inspect(model).class_manager
    instance = cast(M, manager.new_instance())
    instance.__dict__.update(values)
    return instance


_managers: dict[type[Any], Any] = {}
