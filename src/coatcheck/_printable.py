"""Client-supplied text made safe to print in a log line or a terminal.

A path or a user agent is the client's to choose: a newline in it could forge a log
line, and an escape sequence could retitle or rewrite the terminal of an operator who
lists sessions. Every character that does not print is shown as a Python escape.
"""

from __future__ import annotations


def printable(text: str) -> str:
    """``text`` with each character that does not print (controls, line and paragraph
    separators, DEL) written as its Python escape, such as ``\\n`` or ``\\x1b``."""
    if text.isprintable():
        return text  # the usual case, checked in C
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)
