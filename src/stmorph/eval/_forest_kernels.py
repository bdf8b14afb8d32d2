"""numba kernels of :mod:`stmorph.eval._forest` (module level so that numba's on-disk cache hits)."""

import numpy as np
from numba import njit, prange


@njit(cache=True, nogil=True, inline="always")
def _next(state):
    # splitmix64: a counter-based stream per tree (seeded from the tree's index)
    state[0] += np.uint64(0x9E3779B97F4A7C15)
    z = state[0]
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True, nogil=True, inline="always")
def _randint(state, n):
    return np.int64((_next(state) >> np.uint64(11)) * (1.0 / 9007199254740992.0) * n)


@njit(cache=True, nogil=True)
def _sort_keys(keys, buf, m, n_bytes):
    # keys = rank << 32 | position; sort keys[:m] by rank: insertion sort for small m, else an LSD radix sort over
    # the rank bytes (ranks < 2**(8 * n_bytes)). With int32 ranks stored per feature this took the forest from
    # 23.5 to 6.4 ms per tree (ileum stain space, 4,155 cells x 50, one thread) against keys[:m].sort().
    if m <= 32:
        for i in range(1, m):
            v = keys[i]
            j = i - 1
            while j >= 0 and keys[j] > v:
                keys[j + 1] = keys[j]
                j -= 1
            keys[j + 1] = v
        return
    cnt = np.empty(257, dtype=np.int64)
    src = keys
    dst = buf
    for b in range(n_bytes):
        sh = np.int64(32 + 8 * b)
        cnt[:] = 0
        for i in range(m):
            cnt[((src[i] >> sh) & 255) + 1] += 1
        for i in range(256):
            cnt[i + 1] += cnt[i]
        for i in range(m):
            k = (src[i] >> sh) & 255
            dst[cnt[k]] = src[i]
            cnt[k] += 1
        tmp = src
        src = dst
        dst = tmp
    if n_bytes % 2 == 1:
        keys[:m] = buf[:m]


@njit(cache=True, nogil=True)
def grow_and_route(ranks, y, sw, cum, values, n_classes, mtry, seed, Xte, out, n_draws):
    d, n = ranks.shape
    n_bytes = 1
    while (np.int64(1) << np.int64(8 * n_bytes)) < values.shape[1]:
        n_bytes += 1
    state = np.empty(1, dtype=np.uint64)
    state[0] = seed
    counts = np.zeros(n, dtype=np.int64)
    if n_draws <= 0:
        counts[:] = 1  # no bootstrap
    for _ in range(n_draws):
        if cum.size == 0:
            counts[_randint(state, n)] += 1
        else:  # draw with probabilities (sklearn >= 1.9 with sample or class weights)
            u = (_next(state) >> np.uint64(11)) * (1.0 / 9007199254740992.0) * cum[n - 1]
            k = np.searchsorted(cum, u, side="right")
            counts[min(k, n - 1)] += 1
    n_u = 0
    for i in range(n):
        if counts[i] > 0:
            n_u += 1
    samples = np.empty(n_u, dtype=np.int64)
    w = np.zeros(n, dtype=np.float64)
    k = 0
    for i in range(n):
        if counts[i] > 0:
            samples[k] = i
            w[i] = counts[i] * sw[i]
            k += 1
    max_nodes = 2 * n_u + 1
    feat = np.full(max_nodes, -1, dtype=np.int64)
    thr = np.zeros(max_nodes, dtype=np.float64)
    left = np.zeros(max_nodes, dtype=np.int64)
    right = np.zeros(max_nodes, dtype=np.int64)
    value = np.zeros((max_nodes, n_classes), dtype=np.float64)
    # explicit stack of (start, end, node id, features known to be constant there as a bit mask); a feature
    # constant in a node is constant in its descendants, so it is counted as drawn without sorting it again
    # (sklearn's known-constants rule; on sparse count data most drawn features are constant in deep nodes)
    n_words = (d + 63) // 64
    st_const = np.zeros((max_nodes, n_words), dtype=np.uint64)
    cur_const = np.zeros(n_words, dtype=np.uint64)
    st_start = np.empty(max_nodes, dtype=np.int64)
    st_end = np.empty(max_nodes, dtype=np.int64)
    st_node = np.empty(max_nodes, dtype=np.int64)
    keys = np.empty(n_u, dtype=np.int64)
    buf = np.empty(n_u, dtype=np.int64)
    yl = np.empty(n_u, dtype=np.int64)  # class codes and weights of the node's cells, in node order
    wl_ = np.empty(n_u, dtype=np.float64)
    perm = np.arange(d)
    tot = np.empty(n_classes, dtype=np.float64)
    lw = np.empty(n_classes, dtype=np.float64)
    rw = np.empty(n_classes, dtype=np.float64)
    shift = np.int64(32)
    mask = (np.int64(1) << shift) - 1
    n_nodes = 1
    st_start[0], st_end[0], st_node[0] = 0, n_u, 0
    top = 1
    while top > 0:
        top -= 1
        start, end, node = st_start[top], st_end[top], st_node[top]
        cur_const[:] = st_const[top]
        tot[:] = 0.0
        for p in range(start, end):
            i = samples[p]
            yl[p - start] = y[i]
            wl_[p - start] = w[i]
            tot[y[i]] += w[i]
        W = 0.0
        S = 0.0
        n_nonzero = 0
        for c in range(n_classes):
            W += tot[c]
            S += tot[c] * tot[c]
            if tot[c] > 0:
                n_nonzero += 1
        for c in range(n_classes):
            value[node, c] = tot[c] / W
        if end - start < 2 or n_nonzero <= 1:
            continue  # leaf: too small or pure
        best = -np.inf
        best_f = -1
        best_rank = -1
        best_next = -1
        n_visited = 0
        n_const = 0
        for j in range(d):
            if n_visited >= mtry and n_const < n_visited:
                break  # sklearn: max_features drawn (constants count), at least one not constant
            r = j + _randint(state, d - j)
            tmp = perm[j]
            perm[j] = perm[r]
            perm[r] = tmp
            f = perm[j]
            bit = np.uint64(1) << np.uint64(f % 64)
            if cur_const[f // 64] & bit:
                n_visited += 1
                n_const += 1
                continue
            m = end - start
            lo_r = ranks[f, samples[start]]
            hi_r = lo_r
            for q in range(m):
                rq = ranks[f, samples[start + q]]
                keys[q] = (np.int64(rq) << shift) | q
                lo_r = min(lo_r, rq)
                hi_r = max(hi_r, rq)
            n_visited += 1
            if lo_r == hi_r:
                n_const += 1
                cur_const[f // 64] |= bit
                continue  # constant in this node
            _sort_keys(keys, buf, m, n_bytes)
            kk = keys
            lw[:] = 0.0
            for c in range(n_classes):
                rw[c] = tot[c]
            sl = 0.0
            sr = S
            wl = 0.0
            wr = W
            for q in range(m - 1):
                qq = kk[q] & mask
                c = yl[qq]
                wi = wl_[qq]
                sl += 2.0 * wi * lw[c] + wi * wi
                lw[c] += wi
                sr += wi * wi - 2.0 * wi * rw[c]
                rw[c] -= wi
                wl += wi
                wr -= wi
                rk = kk[q] >> shift
                if (kk[q + 1] >> shift) == rk:
                    continue
                proxy = sl / wl + sr / wr
                if proxy > best:
                    best = proxy
                    best_f = f
                    best_rank = rk
                    best_next = kk[q + 1] >> shift
        if best_f < 0:
            continue  # every feature constant: leaf
        # partition samples[start:end] by rank <= best_rank
        lo = start
        hi = end - 1
        while lo <= hi:
            if ranks[best_f, samples[lo]] <= best_rank:
                lo += 1
            else:
                tmp = samples[lo]
                samples[lo] = samples[hi]
                samples[hi] = tmp
                hi -= 1
        a = values[best_f, best_rank]
        b = values[best_f, best_next]
        t = a / 2.0 + b / 2.0
        if t == b or not np.isfinite(t):
            t = a
        feat[node] = best_f
        thr[node] = t
        left[node] = n_nodes
        right[node] = n_nodes + 1
        st_start[top], st_end[top], st_node[top] = lo, end, n_nodes + 1
        st_const[top] = cur_const
        top += 1
        st_start[top], st_end[top], st_node[top] = start, lo, n_nodes
        st_const[top] = cur_const
        top += 1
        n_nodes += 2
    for i in range(Xte.shape[0]):
        node = 0
        while feat[node] >= 0:
            if Xte[i, feat[node]] <= thr[node]:
                node = left[node]
            else:
                node = right[node]
        for c in range(n_classes):
            out[i, c] += value[node, c]
    return n_nodes, feat[:n_nodes], thr[:n_nodes], left[:n_nodes], right[:n_nodes]


@njit(cache=True, nogil=True, parallel=True)
def forest_kernel(ranks, y, sw, cum, values, n_classes, mtry, seeds, Xte, n_blocks, n_draws):
    n_trees = seeds.size
    acc = np.zeros((n_blocks, Xte.shape[0], n_classes), dtype=np.float64)
    nodes = np.zeros(n_trees, dtype=np.int64)
    for b in prange(n_blocks):
        for t in range(b, n_trees, n_blocks):
            nodes[t] = grow_and_route(ranks, y, sw, cum, values, n_classes, mtry, seeds[t], Xte, acc[b], n_draws)[0]
    out = np.zeros((Xte.shape[0], n_classes), dtype=np.float64)
    for b in range(n_blocks):
        out += acc[b]
    return out / n_trees, nodes
