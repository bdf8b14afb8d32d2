"""Errors raised on bad user input.

Every error names *where* the problem is (file, column) and *what was expected*, so a user can fix their
input without reading stmorph's source.
"""

from __future__ import annotations

from os import PathLike

__all__ = ["StmorphInputError", "input_error"]


class StmorphInputError(ValueError):
    """Bad input data: a missing file or column, inconsistent ids, out-of-range values.

    Attributes
    ----------
    file
        The file (or table name) the problem was found in, if any.
    column
        The column concerned, if any.
    expected
        What stmorph expected to find.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | PathLike | None = None,
        column: str | None = None,
        expected: str | None = None,
    ) -> None:
        self.file = None if file is None else str(file)
        self.column = column
        self.expected = expected
        parts = []
        if self.file is not None:
            parts.append(f"file '{self.file}'")
        if column is not None:
            parts.append(f"column '{column}'")
        where = (", ".join(parts) + ": ") if parts else ""
        tail = f" (expected: {expected})" if expected else ""
        super().__init__(f"{where}{message}{tail}")


def input_error(
    message: str,
    *,
    file: str | PathLike | None = None,
    column: str | None = None,
    expected: str | None = None,
) -> StmorphInputError:
    """Build a :class:`StmorphInputError` (``raise input_error(...)``)."""
    return StmorphInputError(message, file=file, column=column, expected=expected)
