"""Registry: named plug-ins of one kind (metrics, state rules, baselines, formulations, ...).

    METRICS = Registry("metric")
    @METRICS.register("ochiai")
    def ochiai(counts): ...
    METRICS.lookup("ochiai")      # or a one-line QnnRepairError naming the known ones

A dict underneath, so `name in REGISTRY`, iteration and `REGISTRY[name]` work as for any dict.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qnnrepair.errors import QnnRepairError


class Registry(dict):
    def __init__(self, kind: str, plural: str | None = None) -> None:
        super().__init__()
        self.kind, self.plural = kind, plural or f"{kind}s"

    def register(self, name: str, value: Any = None) -> Callable[[Any], Any]:
        """Decorator adding the decorated object (or `value`, when given) under `name`."""
        def decorator(obj: Any) -> Any:
            if name in self:
                raise QnnRepairError(f"a {self.kind} named {name!r} is already registered")
            self[name] = obj if value is None else value
            return obj
        return decorator

    def lookup(self, name: Any) -> Any:
        try:
            return self[name]
        except (KeyError, TypeError):
            raise QnnRepairError(f"unknown {self.kind} {name!r}; known {self.plural}: "
                                 f"{', '.join(sorted(self))}") from None

    def copy(self) -> Registry:
        """A registry of the same kind with the same entries (tests register into copies)."""
        twin = Registry(self.kind, self.plural)
        twin.update(self)
        return twin

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self)})"
