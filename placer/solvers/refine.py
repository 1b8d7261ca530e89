"""Exact-objective local search (swaps and slack moves) for partitioning experts into parts.

Parts are nodes (node stage) or the GPUs of one node (GPU stage). The search
minimises, exactly on the weighted hypergraph,

    J = sum_j w_j * lambda_j  +  alpha * max(max_p touch_p, floor)  +  big * violation

where ``lambda_j`` = parts spanned by net ``j``, ``touch_p`` = weight of nets
touching part ``p`` (the NIC-balance term; ``floor`` > 0 makes it a soft cap: a peak
below the floor costs nothing) and ``violation`` sums the broken
side constraints (max-parts per net, hard or with coverage; per-part load cap).
Moves: swap two experts on different parts (keeps counts), move one expert to a
part with a free slot. Iterated local search: random kicks, re-descend, keep the
best. Deterministic for a given seed (numba's own RNG, seeded inside).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

BIG = 1e6


@dataclass(frozen=True)
class SearchSpec:
    """Everything the kernel needs about one partitioning problem.

    ptr/inc: CSR expert -> nets ([experts + 1], [nnz]); nets: [n, k] (-1 padding);
    weights: [n] float64; loads: [experts] float64; slot_cap: [parts] int64 max experts;
    load_cap: [parts] float64 (inf = none); allowed: [experts, parts] bool;
    max_parts: M (0 = none); uncovered_allowed: weight of nets that may exceed M (-1 = hard);
    touch_floor: peak touch below which the alpha term is flat (0 = plain alpha x peak).
    """

    ptr: np.ndarray
    inc: np.ndarray
    nets: np.ndarray
    weights: np.ndarray
    loads: np.ndarray
    slot_cap: np.ndarray
    load_cap: np.ndarray
    allowed: np.ndarray
    alpha: float = 0.0
    max_parts: int = 0
    uncovered_allowed: float = -1.0
    touch_floor: float = 0.0


@nb.njit(cache=True)
def _state(part, K, nets, w, loads):
    n, k = nets.shape
    cnt = np.zeros((n, K), np.int32)
    lam = np.zeros(n, np.int32)
    touch = np.zeros(K, np.float64)
    pload = np.zeros(K, np.float64)
    pcount = np.zeros(K, np.int64)
    for e in range(part.shape[0]):
        pload[part[e]] += loads[e]
        pcount[part[e]] += 1
    cut = 0.0
    for j in range(n):
        for i in range(k):
            e = nets[j, i]
            if e >= 0:
                p = part[e]
                if cnt[j, p] == 0:
                    lam[j] += 1
                    touch[p] += w[j]
                cnt[j, p] += 1
        cut += w[j] * lam[j]
    return cnt, lam, touch, pload, pcount, cut


@nb.njit(cache=True)
def _violation(lam, w, M, unc_allowed, pload, load_cap):
    v = 0.0
    if M > 0:
        if unc_allowed < 0:
            for j in range(lam.shape[0]):
                if lam[j] > M:
                    v += w[j] * (lam[j] - M)
        else:
            over = 0.0
            for j in range(lam.shape[0]):
                if lam[j] > M:
                    over += w[j]
            v += max(0.0, over - unc_allowed)
    for p in range(pload.shape[0]):
        if pload[p] > load_cap[p]:
            v += pload[p] - load_cap[p]
    return v


@nb.njit(cache=True, inline="always")
def _shared_net_gains(pptr, pnet, cnt, w, pair, a, b):
    """Swap-correction of pair ``pair`` (= e * E + f): the weight of the nets holding both e and
    f whose only member in block a (ca) or b (cb) is one of them. Returns (ca, cb)."""
    ca = 0.0
    cb = 0.0
    for q in range(pptr[pair], pptr[pair + 1]):
        j = pnet[q]
        if cnt[j, a] == 1:
            ca += w[j]
        if cnt[j, b] == 1:
            cb += w[j]
    return ca, cb


@nb.njit(cache=True)
def _delta(e, f, b, part, ptr, inc, cnt, lam, w, touch, M, stamp, tok):
    """Effect of moving e to part b and (if f >= 0) f to e's part; returns
    (dcut, dtouch_a, dtouch_b, dviol_hard, dover)."""
    a = part[e]
    dcut = 0.0
    dta = 0.0
    dtb = 0.0
    dvh = 0.0
    dov = 0.0
    if f >= 0:
        for q in range(ptr[f], ptr[f + 1]):
            stamp[inc[q]] = tok
    for q in range(ptr[e], ptr[e + 1]):
        j = inc[q]
        if f >= 0 and stamp[j] == tok:
            continue  # holds both: counts on a and b unchanged
        d = 0
        if cnt[j, a] == 1:
            d -= 1
            dta -= w[j]
        if cnt[j, b] == 0:
            d += 1
            dtb += w[j]
        if d != 0:
            dcut += w[j] * d
            if M > 0:
                old = lam[j]
                new = old + d
                dvh += w[j] * (max(0, new - M) - max(0, old - M))
                dov += w[j] * ((1 if new > M else 0) - (1 if old > M else 0))
    if f >= 0:
        tok2 = tok + 1
        for q in range(ptr[e], ptr[e + 1]):
            stamp[inc[q]] = tok2
        for q in range(ptr[f], ptr[f + 1]):
            j = inc[q]
            if stamp[j] == tok2:
                continue
            d = 0
            if cnt[j, b] == 1:
                d -= 1
                dtb -= w[j]
            if cnt[j, a] == 0:
                d += 1
                dta += w[j]
            if d != 0:
                dcut += w[j] * d
                if M > 0:
                    old = lam[j]
                    new = old + d
                    dvh += w[j] * (max(0, new - M) - max(0, old - M))
                    dov += w[j] * ((1 if new > M else 0) - (1 if old > M else 0))
    return dcut, dta, dtb, dvh, dov


@nb.njit(cache=True)
def _apply_move(e, b, part, ptr, inc, cnt, lam, w, touch, loads, pload, pcount):
    a = part[e]
    dcut = 0.0
    for q in range(ptr[e], ptr[e + 1]):
        j = inc[q]
        cnt[j, a] -= 1
        if cnt[j, a] == 0:
            lam[j] -= 1
            touch[a] -= w[j]
            dcut -= w[j]
        if cnt[j, b] == 0:
            lam[j] += 1
            touch[b] += w[j]
            dcut += w[j]
        cnt[j, b] += 1
    part[e] = b
    pload[a] -= loads[e]
    pload[b] += loads[e]
    pcount[a] -= 1
    pcount[b] += 1
    return dcut


@nb.njit(cache=True)
def _cost_after(cut, touch, a, b, dcut, dta, dtb, viol_m, over, dvh, dov, M, unc_allowed,
                pload, load_cap, la, lb, alpha, floor, big):
    """Objective after a candidate (touch/pload of parts a, b changed by the deltas)."""
    K = touch.shape[0]
    mt = 0.0
    for p in range(K):
        t = touch[p]
        if p == a:
            t += dta
        elif p == b:
            t += dtb
        mt = max(mt, t)
    v = 0.0
    if M > 0:
        if unc_allowed < 0:
            v += viol_m + dvh
        else:
            v += max(0.0, over + dov - unc_allowed)
    for p in range(K):
        load = pload[p]
        if p == a:
            load = la
        elif p == b:
            load = lb
        if load > load_cap[p]:
            v += load - load_cap[p]
    return cut + dcut + alpha * max(mt, floor) + big * v


@nb.njit(cache=True)
def _top3(touch):
    """Indices of the three largest touches (-1 when fewer parts)."""
    i1 = -1
    i2 = -1
    i3 = -1
    for p in range(touch.shape[0]):
        t = touch[p]
        if i1 < 0 or t > touch[i1]:
            i3 = i2
            i2 = i1
            i1 = p
        elif i2 < 0 or t > touch[i2]:
            i3 = i2
            i2 = p
        elif i3 < 0 or t > touch[i3]:
            i3 = p
    return i1, i2, i3


@nb.njit(cache=True)
def _max_other(touch, i1, i2, i3, a, b):
    """Largest touch over the parts other than a and b (0 when none)."""
    if i1 >= 0 and i1 != a and i1 != b:
        return touch[i1]
    if i2 >= 0 and i2 != a and i2 != b:
        return touch[i2]
    if i3 >= 0 and i3 != a and i3 != b:
        return touch[i3]
    return 0.0


@nb.njit(cache=True)
def _pairs(E, nets):
    """CSR over ordered expert pairs (e, f) -> nets holding both: (pptr [E*E+1], pnet [..])."""
    n, k = nets.shape
    count = np.zeros(E * E + 1, np.int64)
    for j in range(n):
        for x in range(k):
            e = nets[j, x]
            if e < 0:
                continue
            for y in range(k):
                f = nets[j, y]
                if f >= 0 and f != e:
                    count[e * E + f + 1] += 1
    pptr = np.cumsum(count)
    fill = pptr[:-1].copy()
    pnet = np.empty(pptr[-1], np.int64)
    for j in range(n):
        for x in range(k):
            e = nets[j, x]
            if e < 0:
                continue
            for y in range(k):
                f = nets[j, y]
                if f >= 0 and f != e:
                    pnet[fill[e * E + f]] = j
                    fill[e * E + f] += 1
    return pptr, pnet


@nb.njit(cache=True)
def _net_contrib(j, sign, nets, cnt, part, w, loss, gain):
    """Add (sign=1) or remove (-1) net j's share of every member's move tables."""
    K = cnt.shape[1]
    for x in range(nets.shape[1]):
        e = nets[j, x]
        if e < 0:
            continue
        if cnt[j, part[e]] == 1:
            loss[e] += sign * w[j]
        for c in range(K):
            if cnt[j, c] == 0:
                gain[e, c] += sign * w[j]


@nb.njit(cache=True)
def _net_contrib_ab(j, sign, a, b, nets, cnt, part, w, loss, gain):
    """Like _net_contrib, restricted to the entries that depend on parts a and b."""
    for x in range(nets.shape[1]):
        e = nets[j, x]
        if e < 0:
            continue
        p = part[e]
        if (p == a or p == b) and cnt[j, p] == 1:
            loss[e] += sign * w[j]
        if cnt[j, a] == 0:
            gain[e, a] += sign * w[j]
        if cnt[j, b] == 0:
            gain[e, b] += sign * w[j]


@nb.njit(cache=True)
def _tables(part, nets, cnt, w, E):
    K = cnt.shape[1]
    loss = np.zeros(E, np.float64)
    gain = np.zeros((E, K), np.float64)
    for j in range(nets.shape[0]):
        _net_contrib(j, 1.0, nets, cnt, part, w, loss, gain)
    return loss, gain


@nb.njit(cache=True)
def _apply_tab(e, f, b, part, ptr, inc, nets, cnt, lam, w, touch, loads, pload, pcount,
               loss, gain, stamp, tok):
    """Move e to b and (f >= 0) f to e's old part, keeping the move tables exact."""
    a = part[e]
    for q in range(ptr[e], ptr[e + 1]):
        j = inc[q]
        stamp[j] = tok
        _net_contrib_ab(j, -1.0, a, b, nets, cnt, part, w, loss, gain)
    if f >= 0:
        for q in range(ptr[f], ptr[f + 1]):
            j = inc[q]
            if stamp[j] != tok:
                _net_contrib_ab(j, -1.0, a, b, nets, cnt, part, w, loss, gain)
    dcut = _apply_move(e, b, part, ptr, inc, cnt, lam, w, touch, loads, pload, pcount)
    if f >= 0:
        dcut += _apply_move(f, a, part, ptr, inc, cnt, lam, w, touch, loads, pload, pcount)
    tok2 = tok + 1
    for q in range(ptr[e], ptr[e + 1]):
        j = inc[q]
        stamp[j] = tok2
        _net_contrib_ab(j, 1.0, a, b, nets, cnt, part, w, loss, gain)
    if f >= 0:
        for q in range(ptr[f], ptr[f + 1]):
            j = inc[q]
            if stamp[j] != tok2:
                _net_contrib_ab(j, 1.0, a, b, nets, cnt, part, w, loss, gain)
    return dcut


@nb.njit(cache=True)
def _descend(part, K, ptr, inc, nets, w, loads, slot_cap, load_cap, allowed, alpha, floor, M,
             unc_allowed, big, cnt, lam, touch, pload, pcount, cut, stamp, tok, order,
             pptr, pnet, loss, gain):
    """Best-improvement per expert, passes until no improving swap or move.

    Without a max-parts limit (M == 0) swap deltas come from the move tables
    (loss, gain) plus a correction over the nets holding both experts; with M > 0
    every candidate is evaluated exactly net by net.
    """
    E = part.shape[0]
    # fast path (no max-parts limit, no load caps): the objective is cut + alpha * max(max touch,
    # floor), evaluated in O(1) from the three largest touches, and a swap whose lower bound (the
    # move tables without the shared-net correction, which is >= 0) cannot beat the best
    # is skipped before its shared nets are scanned. Both give the same values and choices
    # as the general path (float rounding is monotone), only sooner.
    fast = M == 0 and alpha >= 0.0
    for p in range(load_cap.shape[0]):
        if load_cap[p] < np.inf:
            fast = False
    i1, i2, i3 = _top3(touch)
    viol_m = 0.0
    over = 0.0
    if M > 0:
        for j in range(lam.shape[0]):
            if lam[j] > M:
                viol_m += w[j] * (lam[j] - M)
                over += w[j]
    cur = _cost_after(cut, touch, -1, -1, 0.0, 0.0, 0.0, viol_m, over, 0.0, 0.0, M,
                      unc_allowed, pload, load_cap, 0.0, 0.0, alpha, floor, big)
    improved = True
    while improved:
        improved = False
        for oi in range(E):
            e = order[oi]
            a = part[e]
            best = cur - 1e-9
            bf = -2
            bb = -1
            for f in range(E):
                b = part[f]
                if b == a or not allowed[e, b] or not allowed[f, a]:
                    continue
                if fast:
                    dta0 = -loss[e] + gain[f, a]
                    dtb0 = -loss[f] + gain[e, b]
                    mo = _max_other(touch, i1, i2, i3, a, b)
                    mt = max(max(max(0.0, mo), touch[a] + dta0), touch[b] + dtb0)
                    if cut + (dta0 + dtb0) + alpha * max(mt, floor) >= best:
                        continue
                    ca, cb = _shared_net_gains(pptr, pnet, cnt, w, e * E + f, a, b)
                    dta = dta0 + ca
                    dtb = dtb0 + cb
                    mt = max(max(max(0.0, mo), touch[a] + dta), touch[b] + dtb)
                    c = cut + (dta + dtb) + alpha * max(mt, floor)
                    if c < best:
                        best = c
                        bf = f
                        bb = b
                    continue
                if M > 0:
                    tok += 2
                    dcut, dta, dtb, dvh, dov = _delta(e, f, b, part, ptr, inc, cnt, lam, w, touch,
                                                      M, stamp, tok)
                else:
                    ca, cb = _shared_net_gains(pptr, pnet, cnt, w, e * E + f, a, b)
                    dta = -loss[e] + gain[f, a] + ca
                    dtb = -loss[f] + gain[e, b] + cb
                    dcut = dta + dtb
                    dvh = 0.0
                    dov = 0.0
                la = pload[a] - loads[e] + loads[f]
                lb = pload[b] - loads[f] + loads[e]
                c = _cost_after(cut, touch, a, b, dcut, dta, dtb, viol_m, over, dvh, dov, M,
                                unc_allowed, pload, load_cap, la, lb, alpha, floor, big)
                if c < best:
                    best = c
                    bf = f
                    bb = b
            for b in range(K):
                if b == a or pcount[b] >= slot_cap[b] or not allowed[e, b]:
                    continue
                if fast:
                    dta = -loss[e]
                    dtb = gain[e, b]
                    mo = _max_other(touch, i1, i2, i3, a, b)
                    mt = max(max(max(0.0, mo), touch[a] + dta), touch[b] + dtb)
                    c = cut + (dta + dtb) + alpha * max(mt, floor)
                    if c < best:
                        best = c
                        bf = -1
                        bb = b
                    continue
                if M > 0:
                    tok += 2
                    dcut, dta, dtb, dvh, dov = _delta(e, -1, b, part, ptr, inc, cnt, lam, w, touch,
                                                      M, stamp, tok)
                else:
                    dta = -loss[e]
                    dtb = gain[e, b]
                    dcut = dta + dtb
                    dvh = 0.0
                    dov = 0.0
                la = pload[a] - loads[e]
                lb = pload[b] + loads[e]
                c = _cost_after(cut, touch, a, b, dcut, dta, dtb, viol_m, over, dvh, dov, M,
                                unc_allowed, pload, load_cap, la, lb, alpha, floor, big)
                if c < best:
                    best = c
                    bf = -1
                    bb = b
            if bb >= 0:
                tok += 2
                cut += _apply_tab(e, bf, bb, part, ptr, inc, nets, cnt, lam, w, touch, loads,
                                  pload, pcount, loss, gain, stamp, tok)
                if M > 0:
                    viol_m = 0.0
                    over = 0.0
                    for j in range(lam.shape[0]):
                        if lam[j] > M:
                            viol_m += w[j] * (lam[j] - M)
                            over += w[j]
                cur = _cost_after(cut, touch, -1, -1, 0.0, 0.0, 0.0, viol_m, over, 0.0, 0.0, M,
                                  unc_allowed, pload, load_cap, 0.0, 0.0, alpha, floor, big)
                i1, i2, i3 = _top3(touch)
                improved = True
    return cut, cur, tok


@nb.njit(cache=True, nogil=True)
def _ils(part0, K, ptr, inc, nets, w, loads, slot_cap, load_cap, allowed, alpha, floor, M,
         unc_allowed, big, seed, kicks, kick_size):
    np.random.seed(seed)
    E = part0.shape[0]
    part = part0.copy()
    pptr, pnet = _pairs(E, nets)
    cnt, lam, touch, pload, pcount, cut = _state(part, K, nets, w, loads)
    loss, gain = _tables(part, nets, cnt, w, E)
    stamp = np.zeros(nets.shape[0], np.int64)
    tok = 0
    order = np.random.permutation(E)
    cut, cur, tok = _descend(part, K, ptr, inc, nets, w, loads, slot_cap, load_cap, allowed,
                             alpha, floor, M, unc_allowed, big, cnt, lam, touch, pload, pcount, cut,
                             stamp, tok, order, pptr, pnet, loss, gain)
    best_part = part.copy()
    best = cur
    for _ in range(kicks):
        done = 0
        tries = 0
        while done < kick_size and tries < 100 * kick_size:
            tries += 1
            e = np.random.randint(E)
            f = np.random.randint(E)
            a = part[e]
            b = part[f]
            if a == b or not allowed[e, b] or not allowed[f, a]:
                continue
            tok += 2
            cut += _apply_tab(e, f, b, part, ptr, inc, nets, cnt, lam, w, touch, loads,
                              pload, pcount, loss, gain, stamp, tok)
            done += 1
        order = np.random.permutation(E)
        cut, cur, tok = _descend(part, K, ptr, inc, nets, w, loads, slot_cap, load_cap, allowed,
                                 alpha, floor, M, unc_allowed, big, cnt, lam, touch, pload, pcount, cut,
                                 stamp, tok, order, pptr, pnet, loss, gain)
        if cur < best - 1e-9:
            best = cur
            best_part[:] = part
        elif cur > best + 1e-9 or not np.array_equal(part, best_part):
            part[:] = best_part
            cnt, lam, touch, pload, pcount, cut = _state(part, K, nets, w, loads)
            loss, gain = _tables(part, nets, cnt, w, E)
    return best_part, best


def evaluate(spec: SearchSpec, part: np.ndarray, big: float = BIG) -> tuple[float, float, float]:
    """(J, cut, violation) of ``part`` [experts] under ``spec``."""
    K = len(spec.slot_cap)
    _cnt, lam, touch, pload, _pcount, cut = _state(part.astype(np.int64), K, spec.nets, spec.weights, spec.loads)
    viol = _violation(lam, spec.weights, spec.max_parts, spec.uncovered_allowed, pload, spec.load_cap)
    return float(cut + spec.alpha * max(touch.max(), spec.touch_floor) + big * viol), float(cut), float(viol)


def local_search(spec: SearchSpec, part: np.ndarray, *, seed: int = 0, kicks: int = 50,
                 kick_size: int = 3, big: float = BIG) -> tuple[np.ndarray, float]:
    """Iterated local search from ``part`` [experts] (parts 0..K-1); returns (best part, J).

    Never returns something worse than the start (the start is the first incumbent).
    """
    K = len(spec.slot_cap)
    best, value = _ils(
        part.astype(np.int64), K, spec.ptr, spec.inc, spec.nets, spec.weights, spec.loads,
        spec.slot_cap, spec.load_cap, spec.allowed, float(spec.alpha), float(spec.touch_floor),
        int(spec.max_parts),
        float(spec.uncovered_allowed), float(big), int(seed), int(kicks), int(kick_size),
    )
    return best, float(value)
