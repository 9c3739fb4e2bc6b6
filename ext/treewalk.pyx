"""A gradient-boosted tree ensemble walked in C, one row at a time.

The compiled twin of the numpy walk in ``semcached.cachepolicy.trees`` (which builds
the flat node arrays from a LightGBM dump and keeps the pure-Python evaluation):
the same arrays are packed into one array of node structs, and each row follows
each tree from its root to a leaf, without the GIL.

Missing values follow LightGBM, exactly as the numpy walk does: NaN counts as 0
unless the split's missing type is NaN; a split of missing type Zero sends 0 (and
so NaN) its default way, one of type NaN sends NaN its default way, and one of
type None has no default way.

The constructor checks the arrays (every child index within the array and past its
parent, leaves pointing at themselves, every feature index within a row), so no
model, however damaged, can make the walk read out of bounds or loop.
"""

from libc.math cimport exp, isnan
from libc.stdint cimport int8_t, int32_t, uint8_t
from libc.stdlib cimport free, malloc

import numpy as np

__all__ = ["Forest"]

cdef enum:
    MISSING_NONE = 0
    MISSING_ZERO = 1
    MISSING_NAN = 2

cdef struct Node:
    double threshold
    double value        # leaf value (0 at inner nodes)
    int32_t feature
    int32_t left        # a leaf points at itself
    int32_t right
    int8_t missing      # MISSING_*
    uint8_t default_left


cdef inline double walk_row(const Node* nodes, const int32_t* roots, Py_ssize_t trees,
                            const double* x) noexcept nogil:
    cdef double total = 0.0
    cdef double v
    cdef const Node* node
    cdef int32_t i
    cdef bint left
    cdef Py_ssize_t t
    for t in range(trees):
        i = roots[t]
        node = &nodes[i]
        while node.left != i:
            v = x[node.feature]
            if isnan(v):
                if node.missing == MISSING_NONE:
                    left = 0.0 <= node.threshold
                else:  # NaN is missing for type NaN; it reads as 0, missing, for type Zero
                    left = node.default_left
            elif v == 0.0 and node.missing == MISSING_ZERO:
                left = node.default_left
            else:
                left = v <= node.threshold
            i = node.left if left else node.right
            node = &nodes[i]
        total += node.value
    return total


cdef class Forest:
    """The nodes of every tree (flat arrays as ``TreeEnsemble`` holds them) and the
    tree roots; ``features`` is the width of a row."""

    cdef Node* nodes
    cdef int32_t* roots
    cdef readonly Py_ssize_t node_count
    cdef readonly Py_ssize_t tree_count
    cdef readonly Py_ssize_t features

    def __cinit__(self, feature, threshold, left, right, default_left, missing, value,
                  roots, Py_ssize_t features):
        cdef const int32_t[::1] f = np.ascontiguousarray(feature, dtype=np.int32)
        cdef const double[::1] th = np.ascontiguousarray(threshold, dtype=np.float64)
        cdef const int32_t[::1] lo = np.ascontiguousarray(left, dtype=np.int32)
        cdef const int32_t[::1] hi = np.ascontiguousarray(right, dtype=np.int32)
        cdef const uint8_t[::1] dl = np.ascontiguousarray(default_left, dtype=np.uint8)
        cdef const int8_t[::1] ms = np.ascontiguousarray(missing, dtype=np.int8)
        cdef const double[::1] val = np.ascontiguousarray(value, dtype=np.float64)
        cdef const int32_t[::1] rt = np.ascontiguousarray(roots, dtype=np.int32)
        cdef Py_ssize_t n = f.shape[0]
        cdef Py_ssize_t i
        if not (th.shape[0] == lo.shape[0] == hi.shape[0] == dl.shape[0] == ms.shape[0]
                == val.shape[0] == n):
            raise ValueError("the node arrays differ in length")
        if features < 0:
            raise ValueError("features must be >= 0")
        for i in range(n):
            leaf = lo[i] == i and hi[i] == i
            if not leaf and not (i < lo[i] < n and i < hi[i] < n):
                raise ValueError(f"node {i} has children outside the array or before it")
            if not leaf and not 0 <= f[i] < features:
                raise ValueError(f"node {i} splits on feature {f[i]} of {features}")
            if not 0 <= ms[i] <= MISSING_NAN:
                raise ValueError(f"node {i} has missing type {ms[i]}")
        for i in range(rt.shape[0]):
            if not 0 <= rt[i] < n:
                raise ValueError(f"root {i} is outside the node array")
        self.nodes = <Node*>malloc(max(n, 1) * sizeof(Node))
        self.roots = <int32_t*>malloc(max(rt.shape[0], 1) * sizeof(int32_t))
        if self.nodes == NULL or self.roots == NULL:
            raise MemoryError()
        for i in range(n):
            self.nodes[i].threshold = th[i]
            self.nodes[i].value = val[i]
            self.nodes[i].feature = f[i]
            self.nodes[i].left = lo[i]
            self.nodes[i].right = hi[i]
            self.nodes[i].missing = ms[i]
            self.nodes[i].default_left = dl[i] != 0
        for i in range(rt.shape[0]):
            self.roots[i] = rt[i]
        self.node_count = n
        self.tree_count = rt.shape[0]
        self.features = features

    def __dealloc__(self):
        free(self.nodes)
        free(self.roots)

    def raw(self, const double[:, ::1] rows not None):
        """The summed leaf values for each row of ``rows`` (a C-contiguous float64
        array, n x features)."""
        return self._walk(rows, False, 0.0)

    def probability(self, const double[:, ::1] rows not None, double sigmoid):
        """``1 / (1 + exp(-sigmoid * raw))`` for each row: a binary model's output."""
        return self._walk(rows, True, sigmoid)

    cdef _walk(self, const double[:, ::1] rows, bint squash, double sigmoid):
        if rows.shape[1] != self.features:
            raise ValueError(
                f"need rows of {self.features} features, got shape {(rows.shape[0], rows.shape[1])}"
            )
        out = np.empty(rows.shape[0], dtype=np.float64)
        cdef double[::1] o = out
        cdef Py_ssize_t r
        cdef double total
        with nogil:
            for r in range(rows.shape[0]):
                total = walk_row(self.nodes, self.roots, self.tree_count, &rows[r, 0])
                o[r] = 1.0 / (1.0 + exp(-sigmoid * total)) if squash else total
        return out

    def __repr__(self):
        return f"Forest(trees={self.tree_count}, nodes={self.node_count}, features={self.features})"
