"""What run() returned, accepted as Azure accepts it (section 2.3 of the reference): a list, tuple or DataFrame;
succeeded items capped at the input count; the rows ``append_row`` writes, formatted as Azure writes them."""

from __future__ import annotations

import logging
import sys
from typing import Any

WRONG_TYPE_HINT = (
    "Please verify your entry script. run() method should return a Pandas DataFrame or a list. "
    "For append_row output_action, these returned elements are appended into the common output "
    "file. For summary_only, the contents of the elements are ignored. For all output actions, "
    "each returned output element indicates one successful inference of input element in the "
    "input mini-batch."
)


class WrongReturnType(TypeError):
    """run() returned something that is not a list, tuple or DataFrame (Azure's message)."""


def accept(returned: Any, total: int, output_action: str) -> dict[str, Any]:
    """Section 2.3: type check, success counting capped at the input count, output rows (``append_row``)."""
    is_frame = _is_dataframe(returned)
    if isinstance(returned, tuple):
        returned = list(returned)
    if not is_frame and not isinstance(returned, list):
        shown = repr(returned)
        shown = shown if len(shown) <= 200 else shown[:200] + "..."
        raise WrongReturnType(
            f"The return value '{shown}' is not a Pandas DataFrame or a list. {WRONG_TYPE_HINT}"
        )
    count = len(returned)
    accepted: dict[str, Any] = {"succeeded": min(count, total), "returned": count}
    if count > total:
        logging.getLogger("pipeobs.worker").warning(
            "run() returned %d items, which is more than input count %d. Using the input "
            "count as succeeded count and continue.",
            count,
            total,
        )
    if output_action == "append_row":
        accepted["rows"], accepted["header"] = _format_rows(returned, is_frame)
    return accepted


def _is_dataframe(value: Any) -> bool:
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(value, pandas.DataFrame)


def _format_rows(returned: Any, is_frame: bool) -> tuple[bytes, bytes | None]:
    """Azure's append_row format: str(x) + newline; DataFrames space-separated, no header/index."""
    if not is_frame:
        return "".join(f"{item}\n" for item in returned).encode("utf-8", "backslashreplace"), None
    rows = returned.to_csv(sep=" ", header=False, index=False, lineterminator="\n")
    header = returned.head(0).to_csv(sep=" ", header=True, index=False, lineterminator="\n")
    return rows.encode("utf-8", "backslashreplace"), header.encode("utf-8", "backslashreplace")
