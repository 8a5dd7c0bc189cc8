"""``python -m bench.child MODULE:FUNCTION JSON_KWARGS``: one measurement in a fresh interpreter.

The function's return value (a JSON-able dict) is printed on the last line after
``BENCH-RESULT``; a :class:`bench.common.Skipped` becomes ``{"skipped": reason}`` and any other
exception ``{"error": ...}`` with the traceback on stderr.
"""

from __future__ import annotations

import importlib
import json
import sys
import traceback

from bench.common import RESULT_MARK, Skipped


def main(argv: list[str]) -> int:
    target, kwargs = argv[0], json.loads(argv[1]) if len(argv) > 1 else {}
    module_name, function_name = target.split(":")
    try:
        module = importlib.import_module(f"bench.{module_name}")
        result = getattr(module, function_name)(**kwargs)
    except Skipped as exc:
        result = {"skipped": str(exc)}
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the section
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.flush()
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
