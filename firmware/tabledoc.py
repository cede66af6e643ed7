"""The evaluator's transition table as text, for docs/firmware.md (host-only:
not in the board bundle, where it would only cost RAM)."""

from haochaping.firmware import ui


def table_text():
    lines = []
    for s, e, fn, allowed in ui.TABLE:
        targets = [ui.STATE_NAMES[i] for i in range(6) if (allowed >> i) & 1]
        lines.append(
            "%-7s %-8s -> %-22s %s"
            % (ui.STATE_NAMES[s], ui.EVENT_NAMES[e], "|".join(targets), fn.__name__)
        )
    return lines


if __name__ == "__main__":
    print("\n".join(table_text()))
