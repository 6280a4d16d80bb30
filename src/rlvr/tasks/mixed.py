"""`data.task: mixed`: rows of several sources in one run, each read, prompted and scored by the
task of its `data_source` (verl's routing by data_source; docs/byo.md).

MixedTask(routes) holds one Task per source name (built by the pipeline from `data.sources`,
reward functions included). A row's source is its `data_source` field, else its `source` (what
`rlvr data mix` writes); a row without one, or of a source with no route, is a RecordError naming
the source (data.io turns it into "FILE:LINE: ..."). Every example carries its source in metadata
`data_source` and `source` (the key evaluation breaks accuracy down by). The sources must agree on
the response_prefix, since the prompt pre-fill is one per run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from rlvr.errors import RecordError
from rlvr.tasks.base import Example, Score
from rlvr.tasks.generic import reward_failures

SOURCE_FIELDS = ("data_source", "source")


class MixedTask:
    name = "mixed"
    default_difficulty: dict[str, Any] = {}

    def __init__(self, routes: dict[str, Any]) -> None:
        if not routes:
            raise ValueError("task mixed needs at least one source (data.sources)")
        prefixes = {name: task.response_prefix for name, task in routes.items()}
        if len(set(prefixes.values())) > 1:
            raise ValueError(f"the sources' tasks pre-fill different response prefixes {prefixes}; a run "
                             "has one prompt pre-fill: give them the same task_options.response_prefix")
        self.routes = dict(routes)
        self.response_prefix = next(iter(prefixes.values()))

    @property
    def difficulty_keys(self) -> tuple[str, ...] | None:
        """The sources' tasks' difficulty keys, in route order (None when none declares any)."""
        keys = [key for task in self.routes.values()
                for key in (getattr(task, "difficulty_keys", None) or ())]
        return tuple(dict.fromkeys(keys)) or None

    def route(self, example: Example) -> Any:
        return self.routes[example.metadata["data_source"]]

    def examples(self, n: int, seed: int, **difficulty: Any) -> list[Example]:  # noqa: ARG002 - the protocol's
        raise RecordError("task mixed has no generator: its rows come from data.train_file and "
                          "data.eval_file")

    def messages(self, example: Example) -> list[dict[str, str]]:
        return list(self.route(example).messages(example))

    def score(self, completion: str, example: Example) -> Score:
        return self.route(example).score(completion, example)  # type: ignore[no-any-return]

    def from_record(self, record: dict[str, Any]) -> Example:
        source = next((record[k] for k in SOURCE_FIELDS if record.get(k) is not None), None)
        configured = ", ".join(sorted(self.routes))
        if source is None:
            raise RecordError(f"no field 'data_source' (or 'source'): task mixed routes each row by it "
                              f"(data.sources: {configured})")
        if source not in self.routes:
            raise RecordError(f"data_source {source!r} has no task or reward: add it to data.sources "
                              f"(configured: {configured})")
        example = self.routes[source].from_record(record)
        metadata = {**example.metadata, "data_source": source, "source": source}
        return dataclasses.replace(example, metadata=metadata)

    def to_record(self, example: Example) -> dict[str, Any]:
        return {**self.route(example).to_record(example), "data_source": example.metadata["data_source"]}

    def reward_failures(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for task in self.routes.values():
            for kind, count in reward_failures(task).items():
                total[kind] = total.get(kind, 0) + count
        return total
