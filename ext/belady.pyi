import numpy as np
import numpy.typing as npt

__all__ = ["evicted_after", "evicted_after_sized"]

def evicted_after(
    keys: npt.ArrayLike, nxt: npt.ArrayLike, capacity: int
) -> tuple[int, npt.NDArray[np.bool_]]: ...
def evicted_after_sized(
    keys: npt.ArrayLike, sizes: npt.ArrayLike, nxt: npt.ArrayLike, capacity: int
) -> tuple[int, int, npt.NDArray[np.bool_]]: ...
