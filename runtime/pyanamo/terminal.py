"""Text from the table, made safe to print on a terminal.

Item IDs, task IDs, scripts and their output are whatever the user (or anyone who can write the
table) put there. Escape sequences in them could retitle the terminal, hide lines or fake
output, so everything the CLI prints from the table goes through ``printable``."""

from __future__ import annotations

import re

from rich.text import Text

# C0 controls but tab and newline, DEL, and C1 controls (ESC is \x1b, CSI is \x9b).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with each control character (tab and newline kept) written as ``\\xNN``."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def cell(text: str) -> Text:
    """A table cell of user text: no markup, no control characters."""
    return Text(printable(text))
