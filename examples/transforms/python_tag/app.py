"""python_tag: adds the text column `tagged_by` to every event's `after` (default "python").

Config: `value` (optional) replaces "python". Events without `after` (deletes, truncates,
messages) pass through unchanged. Build with ./build.sh (componentize-py 0.25.1); the
bindings module `wit_world` is generated from wit/sluice-transform-0.1 at build time.

Rows cross positionally: `row.columns` indexes the batch's column lists (`batch.columns`),
and `row.values` follows that list. A row with a new set of names needs a new list in the
output, numbered after the batch's: this transform adds one per distinct `after` list.
"""

from typing import Dict, List, Tuple

import wit_world
from componentize_py_types import Err
from wit_world.imports import log
from wit_world.imports.types import (
    Batch,
    Outcome_Events,
    Outcome_Keep,
    Output,
    Row,
    Value_Text,
)

COLUMN = "tagged_by"


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

    def transform(self, batch: Batch) -> Output:
        tagged = Tagged(batch.columns)
        outcomes = []
        for event in batch.events:
            if event.after is None:
                # Nothing to tag: pass the event on as it came (nothing crosses back).
                outcomes.append(Outcome_Keep())
                continue
            event.after = tagged.row(event.after, WitWorld.tag)
            outcomes.append(Outcome_Events([event]))
        return Output([], tagged.declared, outcomes)


class Tagged:
    """The column lists of tagged rows: the input's list index -> the output's."""

    def __init__(self, columns: List[List[str]]) -> None:
        self.columns = columns
        self.declared: List[List[str]] = []
        self.lists: Dict[int, Tuple[int, int]] = {}

    def row(self, row: Row, value: str) -> Row:
        if row.columns not in self.lists:
            names = self.columns[row.columns]
            if COLUMN in names:
                # Replace the value in place: same names, same list.
                self.lists[row.columns] = (row.columns, names.index(COLUMN))
            else:
                index = len(self.columns) + len(self.declared)
                self.declared.append(names + [COLUMN])
                self.lists[row.columns] = (index, len(names))
        index, at = self.lists[row.columns]
        values = list(row.values)
        if at < len(values):
            values[at] = Value_Text(value)
        else:
            values.append(Value_Text(value))
        return Row(index, values)
