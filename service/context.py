"""What a feature needs from the daemon to open its engine, passed down explicitly.

The HTTP layer builds one :class:`DaemonContext` from its application state and hands
it to each feature's ``install_*`` function (``service/semantic/component.py``,
``service/kv/component.py``), which registers its lifecycle components and metrics
and returns the :class:`~semcached.service.lifecycle.Slot` its routes read the engine
from. So the feature packages never import the HTTP layer above them.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from semcached.index.datadir import DataDirectory
from semcached.service.config import Settings
from semcached.service.lifecycle import Components
from semcached.service.reloads import Reloads

__all__ = ["DaemonContext"]


@dataclass(frozen=True, slots=True)
class DaemonContext:
    """The daemon's shared pieces: settings, the data directory (opened by the time a
    component opens), the worker threads, and where components, metrics and reload
    hooks register."""

    settings: Settings
    data_dir: DataDirectory
    executor: ThreadPoolExecutor
    components: Components
    registry: CollectorRegistry
    reloads: Reloads = field(default_factory=Reloads)
