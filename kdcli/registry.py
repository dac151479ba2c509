"""Name → builder maps with "did you mean". They feed CLI choices, `kd list` and parametrised tests.

A registry holds exact names (``resnet32``) and pattern families (``wrn-D-K``): a family has a
regular expression whose groups become keyword arguments of its builder, and an example name
used by ``kd list`` and by the tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

from kdcli.errors import KDError, unknown

T = TypeVar("T", bound=Callable[..., Any])


@dataclass
class Entry(Generic[T]):
    name: str
    builder: T
    help: str = ""
    pattern: re.Pattern[str] | None = None
    parse: Callable[[re.Match[str]], dict[str, Any]] | None = None
    examples: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """A dict from name to builder, with pattern families and suggestions for typos."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(
        self,
        name: str,
        *,
        help: str = "",
        pattern: str | None = None,
        parse: Callable[[re.Match[str]], dict[str, Any]] | None = None,
        examples: tuple[str, ...] = (),
        **info: Any,
    ) -> Callable[[T], T]:
        """Decorator: ``@MODELS.register("resnet32", help=...)``; a family passes ``pattern`` and ``parse``."""

        def wrap(builder: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            compiled = re.compile(pattern) if pattern else None
            self._entries[name] = Entry(name, builder, help, compiled, parse, examples or (name,), info)
            return builder

        return wrap

    def add(self, name: str, builder: T, **kwargs: Any) -> None:
        self.register(name, **kwargs)(builder)

    def resolve(self, name: str) -> tuple[Entry[T], dict[str, Any]]:
        """Find the entry for ``name`` and the keyword arguments its pattern captured."""
        if name in self._entries and self._entries[name].pattern is None:
            return self._entries[name], {}
        for entry in self._entries.values():
            if entry.pattern is not None:
                match = entry.pattern.fullmatch(name)
                if match:
                    return entry, (entry.parse(match) if entry.parse else match.groupdict())
        raise KDError(self.unknown_message(name))

    def unknown_message(self, name: str) -> str:
        return str(unknown(self.kind, name, self.example_names(), shown=self.display_names()))

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        entry, captured = self.resolve(name)
        return entry.builder(*args, **{**captured, **kwargs})

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self.resolve(name)
        except KDError:
            return False
        return True

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def display_names(self) -> list[str]:
        """Names as a user types them: families shown by their template name (``wrn-D-K``)."""
        return list(self._entries)

    def example_names(self) -> list[str]:
        """One concrete, buildable name per example: what tests parametrise over."""
        return [ex for entry in self._entries.values() for ex in entry.examples]
