"""A small builder for DynamoDB update and condition expressions.

Every attribute name and every value goes through a placeholder (``#n0``, ``:v0``), so item
fields such as sub-task keys or user text can never change the meaning of an expression.
"""

from __future__ import annotations

import builtins
import string
from typing import Any

from .model import to_dynamo

Path = str | tuple[str, ...]


class Expression:
    def __init__(self) -> None:
        self._names: dict[str, str] = {}
        self._values: dict[str, Any] = {}
        self._sets: list[str] = []
        self._removes: list[str] = []
        self._adds: list[str] = []
        self._deletes: list[str] = []
        self._conditions: list[str] = []

    def name(self, path: Path) -> str:
        """A placeholder path for an attribute (a tuple is a path into nested maps)."""
        parts = (path,) if isinstance(path, str) else path
        placeholders = []
        for part in parts:
            placeholder = next((k for k, v in self._names.items() if v == part), None)
            if placeholder is None:
                placeholder = f"#n{len(self._names)}"
                self._names[placeholder] = part
            placeholders.append(placeholder)
        return ".".join(placeholders)

    def value(self, value: Any) -> str:
        placeholder = f":v{len(self._values)}"
        self._values[placeholder] = to_dynamo(value)
        return placeholder

    def set(self, path: Path, value: Any) -> Expression:
        self._sets.append(f"{self.name(path)} = {self.value(value)}")
        return self

    def set_from(self, path: Path, source: Path, default: Any) -> Expression:
        """Set ``path`` to the value ``source`` had before this update (``default`` if none)."""
        self._sets.append(f"{self.name(path)} = if_not_exists({self.name(source)}, {self.value(default)})")
        return self

    def remove(self, path: Path) -> Expression:
        self._removes.append(self.name(path))
        return self

    def add(self, path: Path, amount: int | frozenset[str] | builtins.set[str]) -> Expression:
        """Add a number, or add strings to a string set (adding one twice changes nothing)."""
        self._adds.append(f"{self.name(path)} {self.value(amount)}")
        return self

    def delete(self, path: Path, members: frozenset[str] | builtins.set[str]) -> Expression:
        """Take strings out of a string set (DynamoDB removes a set left empty)."""
        self._deletes.append(f"{self.name(path)} {self.value(set(members))}")
        return self

    def when(self, template: str, **operands: Any) -> Expression:
        """Add a condition (ANDed with the others).

        ``template`` names attributes as ``{name:Attr}`` and values as ``{value}`` fields::

            when("{a:lockID} = {state}", state="todo")

        The named conditions in ``queue`` (``is_state``, ``lease_is``, ...) are the only callers.
        """
        values = {field: self.value(operand) for field, operand in operands.items()}
        rendered = []
        for literal, field, spec, _ in string.Formatter().parse(template):
            rendered.append(literal)
            if field is None:
                continue
            if field == "a":
                rendered.append(self.name(tuple((spec or "").split("."))))
            else:
                rendered.append(values[field])
        self._conditions.append("(" + "".join(rendered) + ")")
        return self

    def request(self) -> dict[str, Any]:
        """Keyword arguments for update_item (UpdateExpression and the rest)."""
        clauses = []
        if self._sets:
            clauses.append("SET " + ", ".join(self._sets))
        if self._removes:
            clauses.append("REMOVE " + ", ".join(self._removes))
        if self._adds:
            clauses.append("ADD " + ", ".join(self._adds))
        if self._deletes:
            clauses.append("DELETE " + ", ".join(self._deletes))
        kwargs: dict[str, Any] = {"ExpressionAttributeNames": dict(self._names)}
        if clauses:
            kwargs["UpdateExpression"] = " ".join(clauses)
        if self._values:
            kwargs["ExpressionAttributeValues"] = dict(self._values)
        if self._conditions:
            kwargs["ConditionExpression"] = " AND ".join(self._conditions)
        return kwargs
