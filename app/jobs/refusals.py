"""Why a submission was refused whole (nothing stored): plain exceptions of the domain.

The api maps each to its HTTP status in app/api/errors.py, as it does jobs.Busy.
"""

from __future__ import annotations

from typing import Any


class Refused(Exception):
    """A submission refused whole; retry_after: seconds after which trying again may work."""

    def __init__(self, message: str, details: Any = None, retry_after: int | None = None
                 ) -> None:
        super().__init__(message)
        self.message, self.details, self.retry_after = message, details, retry_after


class RateLimited(Refused):
    """The tenant's submission rate is used up for now (429)."""


class AtCap(Refused):
    """The tenant's unfinished jobs would pass its cap (429)."""


class NeverFits(Refused):
    """More jobs at once than the tenant's cap could ever hold: split them (413)."""


class TooManyLines(Refused):
    """A batch with more lines than max_batch_lines (413)."""


class NothingAccepted(Refused):
    """A batch none of whose lines was valid (422): details lists the rejected lines."""
