"""A sink that keeps what a run gave it: every result and every object event, in order."""

from __future__ import annotations

from edgedet.sinks.base import BaseSink


class Collect(BaseSink):
    def __init__(self):
        self.results = []
        self.objects = []

    def write(self, result):
        self.results.append(result)

    def on_objects(self, events):
        self.objects.extend(events)
