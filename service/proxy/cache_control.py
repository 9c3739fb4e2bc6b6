"""The request directives of ``Cache-Control`` that the caching proxy honours."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CacheDirectives", "parse_cache_control"]


@dataclass(frozen=True, slots=True)
class CacheDirectives:
    no_cache: bool = False  # do not answer from the cache (the answer may be stored)
    no_store: bool = False  # neither answer from the cache nor store
    max_age: float | None = None  # answer only from entries at most this many seconds old

    @property
    def lookup(self) -> bool:
        return not (self.no_cache or self.no_store)

    @property
    def store(self) -> bool:
        return not self.no_store


def parse_cache_control(header: str | None) -> CacheDirectives:
    """The directives of a ``Cache-Control`` header (RFC 9111 §5.2.1); unknown ones,
    and a ``max-age`` that is not a non-negative integer, are ignored as the RFC says."""
    if not header:
        return CacheDirectives()
    no_cache = no_store = False
    max_age: float | None = None
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        name = name.strip().lower()
        value = value.strip().strip('"')
        if name == "no-cache":
            no_cache = True
        elif name == "no-store":
            no_store = True
        elif name == "max-age" and value.isdigit():
            max_age = float(value) if max_age is None else min(max_age, float(value))
    return CacheDirectives(no_cache, no_store, max_age)
