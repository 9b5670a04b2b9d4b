"""Exceptions raised by the repository layer."""

from __future__ import annotations

__all__ = [
    "CollectionCycleError",
    "CollectionError",
    "DatasetExistsError",
    "DatasetNotFoundError",
    "DatasetTypeError",
    "ExpressionError",
    "MissingCollectionError",
    "RepoError",
]


class RepoError(Exception):
    """Base class for errors raised by :mod:`lsstlite.repo`."""


class DatasetNotFoundError(RepoError, LookupError):
    """A dataset is not in any of the collections searched."""

    def __str__(self) -> str:  # LookupError/KeyError-like classes quote their message.
        return str(self.args[0]) if self.args else ""


class DatasetExistsError(RepoError):
    """A dataset with this type, data ID and run already exists."""


class DatasetTypeError(RepoError, ValueError):
    """A dataset type is unknown or is registered with a different definition."""


class CollectionError(RepoError, ValueError):
    """A collection operation is invalid (wrong type, bad definition...)."""


class MissingCollectionError(CollectionError, LookupError):
    """A collection does not exist."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class CollectionCycleError(CollectionError):
    """Defining a chained collection would create a cycle."""


class ExpressionError(RepoError, ValueError):
    """A query expression cannot be parsed or refers to unknown names.

    Attributes
    ----------
    expression : str
        The expression as given.
    position : int
        Index of the offending character in ``expression`` (may equal
        ``len(expression)`` when the expression ends too early).
    reason : str
        The problem, without the caret display.
    """

    def __init__(self, reason: str, expression: str, position: int) -> None:
        self.reason = reason
        self.expression = expression
        self.position = position
        super().__init__(f"{reason}\n    {expression}\n    {' ' * position}^")
