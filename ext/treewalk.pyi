import numpy as np
import numpy.typing as npt

__all__ = ["Forest"]

class Forest:
    def __init__(
        self,
        feature: npt.ArrayLike,
        threshold: npt.ArrayLike,
        left: npt.ArrayLike,
        right: npt.ArrayLike,
        default_left: npt.ArrayLike,
        missing: npt.ArrayLike,
        value: npt.ArrayLike,
        roots: npt.ArrayLike,
        features: int,
    ) -> None: ...
    @property
    def node_count(self) -> int: ...
    @property
    def tree_count(self) -> int: ...
    @property
    def features(self) -> int: ...
    def raw(self, rows: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]: ...
    def probability(
        self, rows: npt.NDArray[np.float64], sigmoid: float
    ) -> npt.NDArray[np.float64]: ...
