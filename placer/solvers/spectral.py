"""Spectral initial node assignment: Laplacian embedding + capacity-exact balanced assignment.

The co-activation graph joins experts chosen together (clique expansion of the
nets, weight ``w / (|net| - 1)`` per pair). Experts are embedded with the
smallest non-trivial eigenvectors of its normalised Laplacian, then assigned
to node slots by a min-cost assignment (each node replicated by its slot count)
against centroids, alternating assignment and centroid updates (balanced k-means).
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from scipy.linalg import eigh
from scipy.optimize import linear_sum_assignment

_BLAS_CONTROLS: list[tuple[object, object]] | None = None


def _blas_controls() -> list[tuple[object, object]]:
    """(set_num_threads, get_num_threads) of every OpenBLAS loaded in this process (Linux)."""
    global _BLAS_CONTROLS
    if _BLAS_CONTROLS is None:
        _BLAS_CONTROLS = []
        try:
            with open("/proc/self/maps") as maps:
                paths = sorted({m for m in re.findall(r"(/\S*openblas\S*\.so\S*)", maps.read())})
        except OSError:
            paths = []
        for path in paths:
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for prefix, suffix in (("scipy_openblas", "64_"), ("scipy_openblas", ""), ("openblas", "64_"),
                                   ("openblas", "")):
                setter = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                getter = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                if setter is not None and getter is not None:
                    getter.restype = ctypes.c_int
                    _BLAS_CONTROLS.append((setter, getter))
                    break
    return _BLAS_CONTROLS


@contextmanager
def one_blas_thread(active: bool = True) -> Iterator[None]:
    """Run the block with OpenBLAS on one thread (restored after; a no-op where unknown).

    The eigensolver of a few hundred experts is fastest on one thread, and on a busy machine
    (or under a process pool over layers) OpenBLAS's spinning threads slow it down 10-50x.
    """
    if not active:
        yield
        return
    controls = _blas_controls()
    saved = []
    for setter, getter in controls:
        try:
            saved.append((setter, int(getter())))
            setter(1)
        except (OSError, ValueError, TypeError):  # pragma: no cover - foreign BLAS builds
            continue
    try:
        yield
    finally:
        for setter, count in saved:
            setter(count)


def coactivation(nets: np.ndarray, weights: np.ndarray, num_experts: int) -> np.ndarray:
    """Clique-expanded co-activation matrix [experts, experts] float64 (zero diagonal)."""
    size = (nets >= 0).sum(axis=1)
    A = np.zeros((num_experts, num_experts))
    k = nets.shape[1]
    for i in range(k):
        for j in range(i + 1, k):
            a, b = nets[:, i], nets[:, j]
            ok = (a >= 0) & (b >= 0)
            val = weights[ok] / np.maximum(size[ok] - 1, 1)
            np.add.at(A, (a[ok], b[ok]), val)
    A = A + A.T
    np.fill_diagonal(A, 0.0)
    return A


def embedding(A: np.ndarray, dims: int) -> np.ndarray:
    """Rows of the ``dims`` smallest non-trivial eigenvectors of the normalised Laplacian: [experts, dims]."""
    deg = A.sum(axis=1)
    inv = 1.0 / np.sqrt(np.maximum(deg, 1e-12))
    L = np.eye(len(A)) - inv[:, None] * A * inv[None, :]
    _vals, vecs = eigh(L)
    X = vecs[:, 1:dims + 1] * inv[:, None]
    # fix eigenvector signs deterministically
    signs = np.sign(X[np.abs(X).argmax(axis=0), np.arange(X.shape[1])])
    X = X * np.where(signs == 0, 1.0, signs)
    norm = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.maximum(norm, 1e-12)


def balanced_assign(
    X: np.ndarray, counts: np.ndarray, allowed: np.ndarray | None = None, *, seed: int = 0, iters: int = 20
) -> np.ndarray:
    """Balanced k-means: node of each expert [experts] with exactly ``counts[n]`` experts on node n.

    X: [experts, dims] embedding; counts: [nodes] (sums to experts);
    allowed: [experts, nodes] bool or None (forbidden pairs get a huge cost).
    """
    E = len(X)
    K = len(counts)
    rng = np.random.default_rng(seed)
    # k-means++ style deterministic seeding
    centers = [X[rng.integers(E)]]
    for _ in range(1, K):
        d = np.min([((X - c) ** 2).sum(axis=1) for c in centers], axis=0)
        centers.append(X[int(d.argmax())])
    C = np.array(centers)
    slot_node = np.repeat(np.arange(K), counts)
    part = None
    for _ in range(iters):
        cost = ((X[:, None, :] - C[None, :, :]) ** 2).sum(axis=2)  # [E, K]
        if allowed is not None:
            cost = np.where(allowed, cost, 1e9)
        rows, cols = linear_sum_assignment(cost[:, slot_node])
        new = np.empty(E, dtype=np.int64)
        new[rows] = slot_node[cols]
        if part is not None and np.array_equal(new, part):
            break
        part = new
        C = np.array([X[part == n].mean(axis=0) if (part == n).any() else C[n] for n in range(K)])
    return part


def spectral_parts(
    nets: np.ndarray, weights: np.ndarray, num_experts: int, counts: np.ndarray,
    allowed: np.ndarray | None = None, *, seed: int = 0, dims: int | None = None,
) -> np.ndarray:
    """Initial node of every expert [experts] from the co-activation spectrum."""
    K = len(counts)
    A = coactivation(nets, weights.astype(np.float64), num_experts)
    X = embedding(A, dims or max(2, K))
    return balanced_assign(X, counts, allowed, seed=seed)
