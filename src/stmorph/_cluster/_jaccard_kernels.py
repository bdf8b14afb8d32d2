"""numba kernel of :func:`stmorph._cluster.jaccard_graph` (module level so that numba's on-disk cache hits)."""

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _contains(row, v):
    # binary search of v in the sorted row
    lo, hi = 0, row.shape[0]
    while lo < hi:
        mid = (lo + hi) // 2
        if row[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    return lo < row.shape[0] and row[lo] == v


@njit(cache=True, nogil=True)
def jaccard_edges(srt):
    """Undirected PhenoGraph edges of sorted neighbour lists ``srt`` ``(n, k)`` (self excluded).

    Every kNN edge ``i -> j`` gets ``s = c / (2k - c)``, ``c = |N(i) & N(j)|`` (a merge of the two sorted rows);
    the symmetrised weight ``(S + S.T) / 2`` is ``s`` for a mutual pair and ``s / 2`` for a one-way pair
    (``c`` is symmetric), so each pair is emitted once, as ``(min, max)``; ``c = 0`` gives no edge. Float32
    arithmetic, as the sparse-product formulation it replaces.

    Returns ``(u, v, w, m)``: the first ``m`` entries are the edges ``u < v`` with weights ``w``.
    """
    n, k = srt.shape
    u = np.empty(n * k, dtype=np.int64)
    v = np.empty(n * k, dtype=np.int64)
    w = np.empty(n * k, dtype=np.float32)
    two_k = np.float32(2.0 * k)
    half = np.float32(0.5)
    m = 0
    for i in range(n):
        a = srt[i]
        for t in range(k):
            j = a[t]
            b = srt[j]
            mutual = _contains(b, i)
            if mutual and j < i:
                continue  # emitted from j's row
            p = 0
            q = 0
            c = 0
            while p < k and q < k:
                if a[p] == b[q]:
                    c += 1
                    p += 1
                    q += 1
                elif a[p] < b[q]:
                    p += 1
                else:
                    q += 1
            if c == 0:
                continue
            cf = np.float32(c)
            s = cf / (two_k - cf)
            if mutual:
                w[m] = (s + s) * half
            else:
                w[m] = s * half
            u[m] = min(i, j)
            v[m] = max(i, j)
            m += 1
    return u, v, w, m
