"""Wiring the caching proxy into the daemon: the upstream session, coalescing, metrics."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from semcached.service.config import ProxySettings
from semcached.service.context import DaemonContext
from semcached.service.lifecycle import FunctionComponent
from semcached.service.proxy.coalesce import Coalescer
from semcached.service.proxy.metrics import ProxyMetrics, parse_prices
from semcached.service.proxy.upstream import Upstream

__all__ = ["Proxy", "install_proxy"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Proxy:
    settings: ProxySettings
    upstream: Upstream
    coalescer: Coalescer
    metrics: ProxyMetrics


def install_proxy(daemon: DaemonContext) -> Proxy:
    """Register the upstream session as a component; ConfigError for bad prices."""
    settings = daemon.settings.proxy
    prices = parse_prices(settings.prices)
    upstream = Upstream(
        settings.upstream_url,
        api_key=settings.upstream_api_key,
        timeout_s=settings.upstream_timeout_s,
    )
    daemon.components.add(FunctionComponent("proxy upstream", upstream.open, upstream.close))
    # The URL only: a key in it (user:pass@) is the operator's to keep out of logs.
    log.info("caching proxy on, upstream %s", settings.upstream_url.split("@")[-1])
    return Proxy(
        settings,
        upstream,
        Coalescer(settings.coalesce_wait_s),
        ProxyMetrics(daemon.registry, prices, settings.max_model_labels),
    )
