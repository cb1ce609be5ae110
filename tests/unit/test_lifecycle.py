"""The item lifecycle declared in ``pyanamo.schema``: every state is live or ended, and the
declared transitions reach every state from an import and lead out of every ended one."""

from __future__ import annotations

from pathlib import Path

from pyanamo.schema import (
    CLAIMABLE_STATES,
    ENDED_STATES,
    IMPORTED_STATES,
    LIVE_STATES,
    TRANSITIONS,
    ItemState,
)


def test_every_state_is_either_live_or_ended_and_only_live_ones_are_claimable():
    assert set(LIVE_STATES) | set(ENDED_STATES) == set(ItemState)
    assert not set(LIVE_STATES) & set(ENDED_STATES)
    assert set(CLAIMABLE_STATES) <= set(LIVE_STATES)
    assert [s for s in ItemState if s.live] == list(LIVE_STATES)
    assert [s for s in ItemState if s.ended] == list(ENDED_STATES)


def test_every_state_is_reached_from_an_import_and_every_ended_one_can_be_reset():
    """(upstream_failed is reset to waiting: it waits again for the item that blocked it)"""
    reached, frontier = set(IMPORTED_STATES), list(IMPORTED_STATES)
    while frontier:
        here = frontier.pop()
        for (source, target) in TRANSITIONS:
            if source is here and target not in reached:
                reached.add(target)
                frontier.append(target)
    assert reached == set(ItemState)
    for state in ENDED_STATES:
        assert any(source is state and target.live for source, target in TRANSITIONS), \
            f"{state.value} cannot be reset"


def test_architecture_md_lists_every_declared_transition():
    """The page a new engineer reads first says what the code declares (and nothing else)."""
    page = (Path(__file__).resolve().parents[2] / "ARCHITECTURE.md").read_text()
    rows = {line for line in page.splitlines() if line.startswith("| `")}
    declared = {f"| `{a.value}` → `{b.value}` | {who} |" for (a, b), who in TRANSITIONS.items()}
    assert rows == declared
