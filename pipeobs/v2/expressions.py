"""``${{ <expr> }}`` data bindings and ``$[[ ... ]]`` optional blocks, as Azure ML v2 resolves them.

A binding names an input or output (``inputs.x``, ``outputs.y``, ``parent.inputs.x``,
``parent.jobs.A.outputs.y``, ``name``, ``default_datastore``...). The caller's ``lookup`` says what each
name means where the text is; a name it does not know is a one-line error naming the text.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable

from pipeobs.errors import ConfigError

BINDING = re.compile(r"\$\{\{\s*(\S*?)\s*\}\}")
OPTIONAL_BLOCK = re.compile(r"\$\[\[(.*?)\]\]", re.DOTALL)

Lookup = Callable[[str], "str | None"]  # None: the name is known but has no value (an optional input)


def bindings(text: str) -> list[str]:
    """The names ``text`` binds, in order (``["inputs.x", "parent.jobs.A.outputs.y"]``)."""
    return BINDING.findall(text) if isinstance(text, str) else []


def whole_binding(value: object) -> str | None:
    """The name when ``value`` is exactly one binding (``"${{parent.inputs.x}}"``), else None."""
    if not isinstance(value, str):
        return None
    match = BINDING.fullmatch(value.strip())
    return match.group(1) if match else None


def substitute(text: str, lookup: Lookup, where: str, quote: bool = False) -> str:
    """``text`` with optional blocks kept or dropped and every binding replaced by its value.

    ``quote`` quotes a value for a shell when it needs it and the YAML did not quote it already (a local
    path with a space stays one word; Azure's mount paths never have one).
    """
    text = drop_empty_blocks(text, lookup)

    def value_of(match: re.Match[str]) -> str:
        value = lookup(match.group(1))
        if value is None:
            raise ConfigError(f"{where}: ${{{{{match.group(1)}}}}} has no value; give it a value, or wrap the "
                              "part that uses it in $[[ ... ]] to drop it when the input is not given")
        return shlex.quote(value) if quote and not _quoted_at(text, match.start()) else value

    return BINDING.sub(value_of, text)


def _quoted_at(text: str, position: int) -> bool:
    """Whether ``position`` in a shell command is inside single or double quotes."""
    quote: str | None = None
    escaped = False
    for char in text[:position]:
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote is None and char in "'\"":
            quote = char
        elif char == quote:
            quote = None
    return quote is not None


def drop_empty_blocks(text: str, lookup: Lookup) -> str:
    """``$[[ ... ]]`` blocks: kept (without the brackets) when every binding in them has a value, else dropped."""

    def block(match: re.Match[str]) -> str:
        inner = match.group(1)
        return inner if all(lookup(name) is not None for name in bindings(inner)) else ""

    return OPTIONAL_BLOCK.sub(block, text)


def split_arguments(text: str, lookup: Lookup, where: str) -> list[str]:
    """``program_arguments`` as the words a shell would make of it, each word's bindings then substituted,
    so that a value with a space (a path) stays one argument."""
    text = BINDING.sub(lambda match: "${{" + match.group(1) + "}}", drop_empty_blocks(text, lookup))
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: cannot split the arguments as a shell would ({exc}): check the quotes") from None
    return [substitute(word, lookup, where) for word in words]
