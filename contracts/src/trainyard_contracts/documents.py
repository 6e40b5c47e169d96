"""A document (a mapping already read from YAML or JSON) as one of the contracts' models, with
every bad field named: what a sweep's and a trigger's validation share."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from trainyard_contracts.spec import FieldError, SpecError, field_errors

_Document = TypeVar("_Document", bound=BaseModel)


def model_of_document(model: type[_Document], document: Any, kind: str) -> _Document:
    """A document (a mapping, YAML or JSON already read) as ``model``; SpecError names every bad
    field, or says the document is not a mapping of ``kind`` fields."""
    if not isinstance(document, dict):
        raise SpecError([FieldError(field="(document)", message=f"expected a mapping of {kind} fields")])
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise SpecError(field_errors(exc)) from None
