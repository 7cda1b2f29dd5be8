"""Read the agent's compact result (``thpcheck.io/result/v1``) from a termination message.

The message comes from a node, so it is untrusted input: it may be truncated, be a log tail
(``FallbackToLogsOnError``), be valid JSON of the wrong shape, or be hostile (huge, or nested
deep enough to exhaust the interpreter's recursion limit). Every input gives an
``AgentResult``; anything unusable gives verdict ``error`` with the cause, never an
exception. Size and nesting are checked before decoding, so the work per message is bounded.
The decoded object is read by ``model.result.AgentResult.from_message``, which types every
field and caps its text to the CRD's limits, so a result can always be stored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from thpcheck.model.result import AgentResult, error_result
from thpcheck.model.text import one_line

SNIPPET = 160  # characters of a bad message quoted in the error
# The kubelet keeps 4096 bytes of a termination message; anything longer was not written by a
# kubelet, and is refused before it is decoded.
MESSAGE_LIMIT = 16384
# A compact result nests four levels deep; deeper input is refused before it is decoded (a
# 1000-deep document makes json.loads raise RecursionError).
DEPTH_LIMIT = 16
_TOKENS = re.compile(r'\\.|["\[\]{}]')  # escapes, quotes and brackets: all that nests


def _snippet(message: str) -> str:
    return one_line(message, SNIPPET)


def parse_result(document: Mapping[str, Any]) -> AgentResult:
    """A decoded compact result -> ``AgentResult`` (shape errors give ``error``)."""
    return AgentResult.from_message(document)


def nesting_depth(text: str) -> int:
    """How deep the brackets of a JSON text nest (strings skipped), without decoding it: one
    pass over its quotes, escapes and brackets."""
    depth = deepest = 0
    in_string = False
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token == '"':
            in_string = not in_string
        elif in_string or len(token) > 1:
            continue
        elif token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def parse_termination(message: str | None, exit_code: int | None = 0,
                      reason: str | None = None) -> AgentResult:
    """The kubelet's ``state.terminated`` of the check container -> ``AgentResult``."""
    try:
        return _parse_termination(message, exit_code, reason)
    except Exception as exc:
        return error_result(f"the termination message could not be read "
                            f"({type(exc).__name__}): {_snippet(str(message or '')[:SNIPPET])}")


def _parse_termination(message: str | None, exit_code: int | None,
                       reason: str | None) -> AgentResult:
    text = (message if isinstance(message, str) else "").strip()
    if not text:
        return error_result(f"the check container exited {exit_code} ({reason or 'no reason'}) "
                            "without a result")
    if len(text) > MESSAGE_LIMIT:
        return error_result(f"the termination message is {len(text)} characters long, more than "
                            f"a kubelet writes ({MESSAGE_LIMIT}): {_snippet(text[:SNIPPET])}")
    depth = nesting_depth(text)
    if depth > DEPTH_LIMIT:
        return error_result(f"the termination message nests {depth} levels deep (a thpcheck "
                            f"result nests at most {DEPTH_LIMIT}): {_snippet(text[:SNIPPET])}")
    try:
        document = json.loads(text)
    except ValueError:
        cut = "truncated " if text.startswith("{") else ""
        return error_result(f"the termination message is {cut}not a thpcheck result "
                            f"(exit {exit_code}): {_snippet(text)}")
    if not isinstance(document, Mapping):
        return error_result(f"the termination message is not a JSON object: {_snippet(text)}")
    return parse_result(document)
