"""Replica-aware swap search: re-seat expert copies to cut what the replay measures.

The node stage partitions one copy of each expert; replicas are added after it
(:mod:`replicas`). With spare slots half the copies may be replicas, and under the
``nearest`` rule (:mod:`placer.dispatch`) a copy on a token's own node serves it
locally, so where replicas sit decides much of the inter-node traffic. This search
works on whole slot rows and minimises the rule's deduplicated cost directly:

    C = sum_nets w * sum_sources cost(net, source node)

where ``cost`` follows the rule's order: an expert with a copy on the source node, or on
a node the token already reaches, is free; otherwise the token reaches one more node
(counted at the holder covering most of its remaining experts, where the rule itself
takes the least-loaded copy: the cost is the rule's best case). Sources are spread evenly over
nodes (the replay's ``t mod P``). A move swaps the contents of two slots on different
nodes (so every expert keeps its copy count, each GPU its slot count) and is kept
when it lowers ``C + penalty x copies loaded onto GPUs that lacked them in service``,
no GPU then holds an expert twice, and no GPU's load (expert load / copies, per copy)
rises above ``load_cap``.

Each pass prices, per copy, removing it and, per expert and node, adding a copy there
(the node's most co-activated candidates only, :data:`TARGETS`); swaps are ranked by
the sum of those four prices and applied best first after an exact re-count of the
nets they touch (a swap whose experts already moved in the pass waits for the next; at most two
re-counts per slot and pass).
Deterministic; never worse than its start on ``C`` plus penalty.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from placer.solvers.problem import expert_incidence

__all__ = ["MAX_NODES", "TARGETS", "pass_work", "seat_replicas", "window_cost"]

#: nodes a bit mask holds (more nodes: the search is skipped)
MAX_NODES = 64
#: candidate target nodes per expert and pass (the most co-activated ones lacking it)
TARGETS = 4


@nb.njit(cache=True, nogil=True)
def _one_source(net, mask, src_bit):  # pragma: no cover - jitted
    """Nodes beyond the source a token reaches: net [k] experts (-1 padding), mask [E]
    holder bits, src_bit the source node's bit (0: a node holding none of them)."""
    k = net.shape[0]
    reached = np.uint64(0)
    count = 0
    for j in range(k):
        e = net[j]
        if e < 0:
            continue
        m = mask[e]
        if m == 0 or (m & src_bit) or (m & reached):
            continue
        pick = m & (~m + np.uint64(1))  # lowest holder
        if m != pick:
            best = -1
            rest = m
            while rest:
                bit = rest & (~rest + np.uint64(1))
                rest ^= bit
                covered = 0
                for jj in range(j + 1, k):
                    f = net[jj]
                    if f >= 0 and (mask[f] & bit) and not (mask[f] & src_bit):
                        covered += 1
                if covered > best:
                    best, pick = covered, bit
        reached |= pick
        count += 1
    return count


@nb.njit(cache=True, nogil=True)
def _net_cost(net, mask, nodes):  # pragma: no cover - jitted
    """sum over source nodes of :func:`_one_source`; sources holding none of the net's
    experts share one count."""
    union = np.uint64(0)
    for j in range(net.shape[0]):
        if net[j] >= 0:
            union |= mask[net[j]]
    total = 0
    inside = 0
    rest = union
    while rest:
        bit = rest & (~rest + np.uint64(1))
        rest ^= bit
        inside += 1
        total += _one_source(net, mask, bit)
    if inside < nodes:
        total += (nodes - inside) * _one_source(net, mask, np.uint64(0))
    return total


@nb.njit(cache=True, nogil=True)
def _expert_delta(x, nets, weights, ptr, inc, mask, nodes, cost):  # pragma: no cover - jitted
    """Weighted change of the nets holding x under ``mask`` against their costs ``cost`` [n]."""
    total = 0.0
    for q in range(ptr[x], ptr[x + 1]):
        i = inc[q]
        total += weights[i] * (_net_cost(nets[i], mask, nodes) - cost[i])
    return total


@nb.njit(cache=True, nogil=True)
def _pair_delta(e, f, nets, weights, ptr, inc, mask, nodes, cost, mark, stamp, store):  # pragma: no cover
    """Weighted change of the nets holding e or f (f < 0: e only), each once, under ``mask``
    against ``cost`` [n]; with ``store`` the new costs are written to ``cost``."""
    total = 0.0
    for x in (e, f):
        if x < 0:
            continue
        for q in range(ptr[x], ptr[x + 1]):
            i = inc[q]
            if mark[i] == stamp:
                continue
            mark[i] = stamp
            new = _net_cost(nets[i], mask, nodes)
            total += weights[i] * (new - cost[i])
            if store:
                cost[i] = new
    return total


@nb.njit(cache=True, nogil=True)
def _masks(cnt):  # pragma: no cover - jitted
    nodes, experts = cnt.shape
    mask = np.zeros(experts, np.uint64)
    for n in range(nodes):
        for e in range(experts):
            if cnt[n, e] > 0:
                mask[e] |= np.uint64(1) << np.uint64(n)
    return mask


@nb.njit(cache=True, nogil=True)
def _move(cnt, mask, e, src, dst):  # pragma: no cover - jitted
    cnt[src, e] -= 1
    cnt[dst, e] += 1
    if cnt[src, e] == 0:
        mask[e] &= ~(np.uint64(1) << np.uint64(src))
    mask[e] |= np.uint64(1) << np.uint64(dst)


@nb.njit(cache=True, nogil=True)
def _migration(service, penalty, e, src, dst):  # pragma: no cover - jitted
    """Change in copies loaded when expert e's copy moves from GPU src to GPU dst, x penalty:
    service [gpus, E] says which GPU held which expert in service."""
    return penalty * ((0.0 if service[dst, e] else 1.0) - (0.0 if service[src, e] else 1.0))


@nb.njit(cache=True, nogil=True)
def _holds(row, gpu, slots, e):  # pragma: no cover - jitted
    for s in range(slots):
        if row[gpu * slots + s] == e:
            return True
    return False


@nb.njit(cache=True, nogil=True)
def _search(row, nets, weights, ptr, inc, per_copy, affinity, gpus_per_node, slots, load_cap, service,
            penalty, passes, targets):  # pragma: no cover - jitted
    num_slots = row.shape[0]
    nodes = num_slots // slots // gpus_per_node
    experts = per_copy.shape[0]
    cnt = np.zeros((nodes, experts), np.int64)
    gpu_load = np.zeros(num_slots // slots)
    for j in range(num_slots):
        if row[j] >= 0:
            cnt[j // slots // gpus_per_node, row[j]] += 1
            gpu_load[j // slots] += per_copy[row[j]]
    mask = _masks(cnt)
    cost = np.empty(nets.shape[0])
    for i in range(nets.shape[0]):
        cost[i] = _net_cost(nets[i], mask, nodes)
    mark = np.zeros(nets.shape[0], np.int64)
    stamp = 0
    for _ in range(passes):
        # prices: removing a node's only copy, adding a copy to a node lacking one
        remove = np.zeros(num_slots)
        for j in range(num_slots):
            e = row[j]
            a = j // slots // gpus_per_node
            if e >= 0 and cnt[a, e] == 1:
                mask[e] &= ~(np.uint64(1) << np.uint64(a))
                remove[j] = _expert_delta(e, nets, weights, ptr, inc, mask, nodes, cost)
                mask[e] |= np.uint64(1) << np.uint64(a)
        add = np.zeros((experts, nodes))
        is_target = np.zeros((experts, nodes), np.bool_)
        for e in range(experts):
            order = np.argsort(-affinity[e])
            taken = 0
            for b in order:
                if taken == targets:
                    break
                if cnt[b, e] > 0:
                    continue
                mask[e] |= np.uint64(1) << np.uint64(b)
                add[e, b] = _expert_delta(e, nets, weights, ptr, inc, mask, nodes, cost)
                mask[e] &= ~(np.uint64(1) << np.uint64(b))
                is_target[e, b] = True
                taken += 1
        # rank swaps by the priced estimate
        est = np.empty(num_slots * num_slots)
        pair = np.empty((num_slots * num_slots, 2), np.int64)
        count = 0
        for j1 in range(num_slots):
            e = row[j1]
            a = j1 // slots // gpus_per_node
            if e < 0:
                continue
            for j2 in range(num_slots):
                b = j2 // slots // gpus_per_node
                f = row[j2]
                if b == a or f == e or not is_target[e, b]:
                    continue
                g1, g2 = j1 // slots, j2 // slots
                value = remove[j1] + add[e, b] + _migration(service, penalty, e, g1, g2)
                if f >= 0:
                    value += remove[j2] + (add[f, a] if is_target[f, a] else 0.0)
                    value += _migration(service, penalty, f, g2, g1)
                if value < -1e-9:
                    est[count] = value
                    pair[count, 0] = j1
                    pair[count, 1] = j2
                    count += 1
        order = np.argsort(est[:count], kind="mergesort")
        touched = np.zeros(experts, np.bool_)
        applied = 0
        tries = 0
        for r in order:
            if tries == 2 * num_slots:
                break
            j1, j2 = pair[r, 0], pair[r, 1]
            e, f = row[j1], row[j2]
            if touched[e] or (f >= 0 and touched[f]):
                continue
            g1, g2 = j1 // slots, j2 // slots
            a, b = g1 // gpus_per_node, g2 // gpus_per_node
            if _holds(row, g2, slots, e) or (f >= 0 and _holds(row, g1, slots, f)):
                continue
            lf = per_copy[f] if f >= 0 else 0.0
            if gpu_load[g1] - per_copy[e] + lf > load_cap or gpu_load[g2] - lf + per_copy[e] > load_cap:
                continue
            tries += 1
            migration = _migration(service, penalty, e, g1, g2)
            _move(cnt, mask, e, a, b)
            if f >= 0:
                migration += _migration(service, penalty, f, g2, g1)
                _move(cnt, mask, f, b, a)
            stamp += 1
            delta = _pair_delta(e, f, nets, weights, ptr, inc, mask, nodes, cost, mark, stamp, False)
            if delta + migration < -1e-9:
                stamp += 1
                _pair_delta(e, f, nets, weights, ptr, inc, mask, nodes, cost, mark, stamp, True)
                row[j1], row[j2] = f, e
                gpu_load[g1] += lf - per_copy[e]
                gpu_load[g2] += per_copy[e] - lf
                touched[e] = True
                if f >= 0:
                    touched[f] = True
                applied += 1
            else:
                _move(cnt, mask, e, b, a)
                if f >= 0:
                    _move(cnt, mask, f, a, b)
        if applied == 0:
            break
    return row


def pass_work(num_slots: int, num_experts: int, num_nodes: int, nets: np.ndarray, targets: int = TARGETS) -> float:
    """Estimated kernel steps of one search pass: net re-counts (prices of every slot and
    of ``targets`` nodes per expert, two exact re-counts per slot) x the pins each re-count
    visits (sources reached, at most min(nodes, 2k) + 1, x k). nets: [n, k] (-1 padding)."""
    k = nets.shape[1] if nets.ndim == 2 else 0
    pins_per_expert = int((nets >= 0).sum()) / max(num_experts, 1)
    return float((3 * num_slots + targets * num_experts) * pins_per_expert * (min(num_nodes, 2 * k) + 1) * k)


def _node_counts(row: np.ndarray, num_experts: int, slots_per_gpu: int, gpus_per_node: int) -> np.ndarray:
    """[nodes, E] copies of each expert on each node of row [slots]."""
    nodes = len(row) // slots_per_gpu // gpus_per_node
    held = np.flatnonzero(row >= 0)
    cnt = np.zeros((nodes, num_experts), np.int64)
    np.add.at(cnt, (held // slots_per_gpu // gpus_per_node, row[held]), 1)
    return cnt


@nb.njit(cache=True, nogil=True)
def _total(nets, weights, mask, nodes):  # pragma: no cover - jitted
    total = 0.0
    for i in range(nets.shape[0]):
        total += weights[i] * _net_cost(nets[i], mask, nodes)
    return total


def window_cost(row: np.ndarray, nets: np.ndarray, weights: np.ndarray, slots_per_gpu: int,
                gpus_per_node: int) -> float:
    """``C`` of one layer's slots row [slots] on nets [n, k] (-1 padding) of weights [n]
    (nodes beyond :data:`MAX_NODES`: NaN)."""
    num_experts = int(max(nets.max(initial=-1), row.max(initial=-1))) + 1
    cnt = _node_counts(row, num_experts, slots_per_gpu, gpus_per_node)
    if cnt.shape[0] > MAX_NODES:
        return float("nan")
    return float(_total(np.ascontiguousarray(nets, dtype=np.int64), np.asarray(weights, dtype=np.float64),
                        _masks(cnt), cnt.shape[0]))


def seat_replicas(row: np.ndarray, nets: np.ndarray, weights: np.ndarray, loads: np.ndarray,
                  affinity: np.ndarray, gpus_per_node: int, slots_per_gpu: int, *,
                  service: np.ndarray | None = None, penalty: float = 0.0, load_cap: float | None = None,
                  passes: int = 6, targets: int = TARGETS) -> np.ndarray:
    """One layer's slots row after the swap search (see the module docstring).

    row: [gpus * slots] expert per slot (-1 empty); nets: [n, k] top-k sets (-1 padding);
    weights: [n] tokens per set; loads: [E]; affinity: [E, E] co-activation; service:
    [gpus * slots] row in service (default ``row``), a copy loaded onto a GPU that lacked it
    there costs ``penalty``; load_cap: most load per GPU (default: the start's busiest GPU).
    Returns a new row [gpus * slots] holding the same copies of each expert.
    """
    num_experts = len(loads)
    nodes = len(row) // slots_per_gpu // gpus_per_node
    if nodes < 2 or nodes > MAX_NODES or len(nets) == 0:
        return row.copy()
    held = row >= 0
    copies = np.bincount(row[held], minlength=num_experts)
    per_copy = np.asarray(loads, dtype=np.float64) / np.maximum(copies, 1)
    if load_cap is None:
        load_cap = float(np.bincount(np.flatnonzero(held) // slots_per_gpu, weights=per_copy[row[held]],
                                     minlength=len(row) // slots_per_gpu).max())
    cnt = _node_counts(row, num_experts, slots_per_gpu, gpus_per_node)
    node_affinity = np.ascontiguousarray((np.asarray(affinity, dtype=np.float64) @ (cnt.T > 0)), dtype=np.float64)
    ptr, inc = expert_incidence(nets, num_experts)
    service_row = row if service is None else service
    in_service = np.zeros((len(row) // slots_per_gpu, num_experts), dtype=np.bool_)
    filled = np.flatnonzero(service_row >= 0)
    in_service[filled // slots_per_gpu, service_row[filled]] = True
    return _search(row.astype(np.int64).copy(), np.ascontiguousarray(nets, dtype=np.int64),
                   np.asarray(weights, dtype=np.float64), ptr, inc, per_copy, node_affinity, gpus_per_node,
                   slots_per_gpu, float(load_cap) + 1e-9, in_service, float(penalty), int(passes), int(targets))
