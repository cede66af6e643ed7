"""The evaluator's transition table as text, for docs/firmware.md (host-only:
not in the board bundle, where it would only cost RAM)."""

from haochaping.firmware import ui


def rows():
    """ui.TABLE (one flat tuple on the board) as (state, event, handler, may lead to) rows."""
    t = ui.TABLE
    return [tuple(t[i : i + 4]) for i in range(0, len(t), 4)]


def table_text():
    lines = []
    for s, e, fn, allowed in rows():
        targets = [ui.STATE_NAMES[i] for i in range(len(ui.STATE_NAMES)) if (allowed >> i) & 1]
        lines.append(
            "%-7s %-8s -> %-22s %s"
            % (ui.STATE_NAMES[s], ui.EVENT_NAMES[e], "|".join(targets), fn.__name__)
        )
    return lines


if __name__ == "__main__":
    print("\n".join(table_text()))
