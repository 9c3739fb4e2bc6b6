import numpy as np
import numpy.typing as npt

__all__ = ["evicted_after"]

def evicted_after(
    keys: npt.ArrayLike, nxt: npt.ArrayLike, capacity: int
) -> tuple[int, npt.NDArray[np.bool_]]: ...
