"""python_tag: adds the text column `tagged_by` to every event's `after` (default "python").

Config: `value` (optional) replaces "python". Events without `after` (deletes, truncates,
messages) pass through unchanged. Build with ./build.sh (componentize-py 0.25.1); the
bindings module `wit_world` is generated from wit/sluice-transform-0.1 at build time.
"""

from typing import List, Tuple

import wit_world
from componentize_py_types import Err
from wit_world.imports import log
from wit_world.imports.types import Column, Event, Outcome, Outcome_Events, Value_Text


class WitWorld(wit_world.WitWorld):
    tag = "python"

    def init(self, config: List[Tuple[str, str]]) -> None:
        for key, value in config:
            if key == "value":
                if not value:
                    # Raising Err(...) is how a Python guest returns `result::err`.
                    raise Err("python_tag: config key `value` must not be empty")
                WitWorld.tag = value
        log.log(log.Level.DEBUG, f"python_tag: tagging with {WitWorld.tag!r}")

    def transform(self, events: List[Event]) -> List[Outcome]:
        return [Outcome_Events([tag(event, WitWorld.tag)]) for event in events]


def tag(event: Event, value: str) -> Event:
    if event.after is not None:
        event.after = [c for c in event.after if c.name != "tagged_by"]
        event.after.append(Column("tagged_by", Value_Text(value)))
    return event
