"""The caching proxy's metrics: what it answered from where, and what that saved.

Per model, with the model label bounded: priced models (``proxy.prices``) always
have their own, then the first ``proxy.max_model_labels`` others seen; the rest
count as ``other``, so a caller cannot grow the series without end.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from semcached.errors import ConfigError

__all__ = ["OTHER_MODEL", "Price", "ProxyMetrics", "parse_prices"]

OTHER_MODEL = "other"
UPSTREAM_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float


def parse_prices(entries: Iterable[str]) -> dict[str, Price]:
    """``model=input/output`` entries; ConfigError naming the bad one."""
    prices: dict[str, Price] = {}
    for entry in entries:
        model, sep, pair = entry.rpartition("=")
        inp, slash, out = pair.partition("/")
        try:
            if not (sep and slash and model.strip()):
                raise ValueError
            price = Price(float(inp), float(out))
            if price.input < 0 or price.output < 0:
                raise ValueError
        except ValueError:
            raise ConfigError(
                f"proxy.prices: expected model=input/output (USD per 1M tokens), got {entry!r}"
            ) from None
        prices[model.strip()] = price
    return prices


class ProxyMetrics:
    def __init__(
        self, registry: CollectorRegistry, prices: Mapping[str, Price], max_model_labels: int
    ) -> None:
        self.prices = dict(prices)
        self._max_others = max_model_labels
        self._others: set[str] = set()
        self.requests = Counter(
            "semcached_proxy_requests",
            "Proxied requests by model and cache status (hit, miss, bypass).",
            ["model", "cache"],
            registry=registry,
        )
        self.bypasses = Counter(
            "semcached_proxy_bypasses",
            "Requests that neither looked up nor stored, by reason.",
            ["reason"],
            registry=registry,
        )
        self.not_stored = Counter(
            "semcached_proxy_not_stored",
            "Upstream answers not stored, by reason (status, truncated, tool_call, "
            "too_large, no_store).",
            ["reason"],
            registry=registry,
        )
        self.coalesced = Counter(
            "semcached_proxy_coalesced",
            "Misses answered with a concurrent identical miss's upstream answer.",
            registry=registry,
        )
        self.upstream_seconds = Histogram(
            "semcached_proxy_upstream_seconds",
            "Upstream calls from request to last byte, by model.",
            ["model"],
            buckets=UPSTREAM_BUCKETS_S,
            registry=registry,
        )
        self.upstream_failures = Counter(
            "semcached_proxy_upstream_failures",
            "Upstream calls without a usable answer, by reason (status, timeout, "
            "unreachable, broken_stream).",
            ["reason"],
            registry=registry,
        )
        self.tokens_saved = Counter(
            "semcached_proxy_tokens_saved",
            "Tokens not spent upstream thanks to hits (by the cached answer's usage), by "
            "model and kind (prompt, completion).",
            ["model", "kind"],
            registry=registry,
        )
        self.cost_saved = Counter(
            "semcached_proxy_cost_saved_usd",
            "Estimated USD not spent upstream thanks to hits, by model (proxy.prices).",
            ["model"],
            registry=registry,
        )

    def label(self, model: str) -> str:
        """``model`` as a label value, within the bound."""
        if model in self.prices or model in self._others:
            return model
        if len(self._others) < self._max_others and model:
            self._others.add(model)
            return model
        return OTHER_MODEL

    def saved(self, model: str, usage: Any) -> None:
        """Count a hit's saving from the cached answer's usage (nothing without one)."""
        if not isinstance(usage, Mapping):
            return
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        prompt = prompt if isinstance(prompt, int) and prompt > 0 else 0
        completion = completion if isinstance(completion, int) and completion > 0 else 0
        label = self.label(model)
        self.tokens_saved.labels(label, "prompt").inc(prompt)
        self.tokens_saved.labels(label, "completion").inc(completion)
        price = self.prices.get(model)
        if price is not None:
            cost = (prompt * price.input + completion * price.output) / 1_000_000
            self.cost_saved.labels(label).inc(cost)
