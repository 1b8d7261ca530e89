"""Synthetic routing traces calibrated to real ones (``placer synth``).

Real traces of frontier-size models are not public, so this module generates
them from a small latent model whose knobs map onto what real traces show.

The model
---------
Every token carries a *vocabulary item* ``v`` (Zipf-distributed, so frequent
items recur and, like ``the`` in a real model, tend to route the same way) and a
*topic* ``z`` (a cluster of co-activated experts; topics persist along a
sequence). In MoE layer ``l`` the token's weight for expert ``e`` is::

    w[e] = exp(pop[l, e])                           expert popularity
         * exp(topic_strength)    if e in cluster(l, z)     co-activation clusters
         * exp(identity[l])       if e in favourites(l, v)  token identity

and the token draws its ``top_k`` experts from ``w`` without replacement
(Plackett-Luce: first expert with probability ``w[e] / sum(w)``, the next from
the rest, and so on; the same as the top-k of ``log w + Gumbel noise``).
``cluster(l, z)`` is a random set of ``cluster_size`` experts per topic and
layer; ``favourites(l, v)`` is ``identity_experts`` experts hashed from the item
and layer. Experts also form ``families`` (a random partition per layer, experts
that specialise alike): each cluster member and favourite comes from its topic's
or item's home family with probability ``locality``, otherwise from all experts.
Families are what makes co-activation partitionable; ``locality`` sets its strength.

Group-limited routing (``num_groups`` > 1, DeepSeek-V3 style): the experts form
``num_groups`` contiguous groups; the token first draws ``groups_per_token``
groups without replacement, each with probability proportional to the group's
total weight, then its experts from those groups only.

* Per-layer variation: each layer draws its own popularity (log-normal, spread
  ``popularity_sigma`` times a per-layer factor ``exp(popularity_jitter N(0,1))``),
  its own clusters and favourites; the identity strength falls linearly with
  depth (``identity_decay``) and the topic strength may grow with depth
  (``topic_ramp``): early layers route more by token identity, later ones by context.
* Sequences: log-normal lengths. A sequence may open with one of ``templates``
  fixed prompts whose tokens route identically wherever they occur (real
  evaluation traces repeat their instruction prefixes).
* Topic persistence: after the template a sequence starts a topic segment; each
  later token keeps the segment's topic with probability ``persistence``, or
  starts a new segment with a topic drawn from the topic mixture weights
  (Dirichlet(``topic_concentration``) over ``topics``).
* Drift: the ``test`` split perturbs the log topic weights by
  ``drift * N(0, 1)`` and each layer's log-popularity by ``drift * spread *
  N(0, 1)``; ``train`` is unperturbed. Both splits share the "model" (clusters,
  favourites, templates, vocabulary) and draw different tokens.

Reproducibility and streaming
-----------------------------
All randomness is counter-based: a token's draws are hashes of (seed, split,
global token index, layer); the model tables come from ``(seed, layer)``. Any
window of a trace can be generated on its own (:func:`generate` with ``start``)
and equals the same rows of a longer trace, so :func:`write_shards` streams a
trace of any size shard by shard and the concatenated shards equal one
:func:`generate` call. The sampler is compiled with numba and runs in parallel
over tokens.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numba
import numpy as np
import tomllib
from scipy.special import ndtri

from placer.errors import InputError
from placer.progress import ProgressFn, track
from placer.trace import MANIFEST, Trace, id_dtype, save_trace, write_shard_manifest

SPLITS = ("train", "test")
SHARD_PATTERN = "shard-{:05d}.npz"
_SHARD_NAME = re.compile(r"shard-\d+\.npz")
_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


@dataclass(frozen=True)
class SynthParams:
    """Parameters of the synthetic trace generator (the model is in the module docstring).

    Shape:
      num_experts: routed experts per layer (E).
      top_k: experts per token (k).
      num_layers: MoE layers.
      num_groups: expert groups for group-limited routing (contiguous, E / num_groups
        experts each); 0 or 1 = no group limit.
      groups_per_token: groups a token may use (DeepSeek-V3: 4 of 8); 0 without groups.

    Expert popularity (load skew, entropy):
      popularity_sigma: standard deviation of the log-popularity ``pop[l, e]``; 0 = all
        experts equally popular. Mostly sets the max/mean load skew.
      popularity_jitter: per-layer variation of that spread: layer ``l`` uses
        ``popularity_sigma * exp(popularity_jitter * N(0, 1))``.

    Co-activation clusters (what a topology-aware placement can exploit):
      topics: latent topics per layer, each with its own cluster of experts.
      cluster_size: experts in a topic's cluster (a random subset per topic and layer).
      topic_strength: log-weight boost of the token's topic cluster at the last layer;
        0 = no clusters.
      topic_ramp: relative weakening of the topic boost towards the first layer (0 =
        constant, 1 = none at the first layer): context builds up with depth.
      topic_concentration: Dirichlet concentration of the topic mixture weights
        (small = a few dominant topics, large = near-uniform).
      persistence: probability that a token keeps the previous token's topic within a
        sequence (adjacent tokens then share experts).
      families: expert families per layer (a random partition into equal parts; must
        divide num_experts): experts that specialise alike.
      locality: probability that a boosted expert (a cluster member or a favourite) is
        drawn from the home family of its topic or vocabulary item rather than from all
        experts; 0 = no family structure. With ``topic_strength`` it sets how much a
        partitioner can gain.

    Token identity (repeated top-k sets: the distinct-set share):
      vocab_size: vocabulary items; item ``v`` (0-based) has frequency ~ (v + 1) ** -zipf.
      zipf: Zipf exponent of the vocabulary.
      identity_experts: favourite experts per item and layer (hashed; duplicates merge).
      identity_strength: log-weight boost of the favourites at the first layer; large =
        what a token is fixes its experts.
      identity_decay: relative drop of the identity strength from the first to the last
        layer (0 = constant, 1 = none at the last layer).

    Sequences and prompt templates:
      seq_len_median, seq_len_sigma: log-normal sequence lengths (median, log-space sd).
      seq_len_min, seq_len_max: clip of the sequence lengths.
      templates: fixed prompt prefixes; each sequence opens with one drawn uniformly
        (0 = none).
      template_tokens: longest template; template lengths are uniform in
        [ceil(template_tokens / 4), template_tokens].

    Domain drift:
      drift: perturbation of the ``test`` split (topic log-weights by drift * N(0, 1),
        log-popularity by drift * layer spread * N(0, 1)); 0 = test drawn like train.

    description: one line for listings.
    """

    num_experts: int
    top_k: int
    num_layers: int
    num_groups: int = 0
    groups_per_token: int = 0
    popularity_sigma: float = 0.5
    popularity_jitter: float = 0.2
    topics: int = 16
    cluster_size: int = 8
    topic_strength: float = 1.5
    topic_ramp: float = 0.0
    topic_concentration: float = 2.0
    persistence: float = 0.8
    families: int = 1
    locality: float = 0.0
    vocab_size: int = 4096
    zipf: float = 1.0
    identity_experts: int = 6
    identity_strength: float = 1.0
    identity_decay: float = 0.5
    seq_len_median: float = 128.0
    seq_len_sigma: float = 1.0
    seq_len_min: int = 16
    seq_len_max: int = 8192
    templates: int = 0
    template_tokens: int = 16
    drift: float = 0.1
    description: str = ""

    @property
    def grouped(self) -> bool:
        return self.num_groups > 1


# ---------------------------------------------------------------- presets

PRESETS: dict[str, SynthParams] = {}
PRESET_SKEW: dict[str, tuple[float, float]] = {}
"""Per preset, the range of its mean per-layer max/mean load skew (train split, seeds
0-2, 20k to 1M tokens); tests check it."""


def _register(name: str, params: SynthParams, skew: tuple[float, float]) -> None:
    PRESETS[name] = params
    PRESET_SKEW[name] = skew


# FROZEN presets. ``esft`` is calibrated against the ESFT DeepSeek-V2-Lite traces
# (benchmarks/bench_synth_calibration.py). The frontier presets keep its routing
# character and set each model's shape; their popularity spread aims at a max/mean
# skew of about 3-6. Do not retune them once floors are measured against them.
_register("esft", SynthParams(
    num_experts=64, top_k=6, num_layers=26,
    popularity_sigma=0.08, popularity_jitter=0.2,
    topics=16, cluster_size=2, topic_strength=8.2, topic_ramp=0.0, topic_concentration=5.0,
    persistence=0.8, families=8, locality=0.8,
    vocab_size=512, zipf=0.94, identity_experts=5, identity_strength=8.0, identity_decay=0.25,
    seq_len_median=72.0, seq_len_sigma=1.2, seq_len_min=48, seq_len_max=2048,
    templates=4, template_tokens=20, drift=0.05,
    description="DeepSeek-V2-Lite on the ESFT tasks: 64 experts, top-6, 26 layers (calibrated)",
), (2.3, 3.2))

# The frontier presets inherit the esft routing character, scaled to each shape: cluster
# and favourite counts scale with k (2 and 5 at k = 6), the log boosts grow by ln(E / 64)
# (a boosted expert keeps the same weight relative to an average one), topics scale with
# E (16 per 64 experts) and families hold 16 experts (4 for top-2). Popularity spread,
# vocabulary (8192 items, Zipf 1.0) and sequences (log-normal around 512 tokens, 8
# system-prompt templates of up to 64 tokens) are assumptions, not calibrated; drift 0.25
# makes the test split a moderately shifted domain.
_FRONTIER: dict = {
    "popularity_sigma": 0.3, "popularity_jitter": 0.2, "topic_ramp": 0.0, "topic_concentration": 5.0,
    "persistence": 0.8, "locality": 0.8, "vocab_size": 8192, "zipf": 1.0, "identity_decay": 0.25,
    "seq_len_median": 512.0, "seq_len_sigma": 1.0, "seq_len_min": 32, "seq_len_max": 16384,
    "templates": 8, "template_tokens": 64, "drift": 0.25,
}
_register("deepseek-v3", SynthParams(
    num_experts=256, top_k=8, num_layers=58, num_groups=8, groups_per_token=4,
    topics=64, cluster_size=3, topic_strength=9.6, families=16, identity_experts=7, identity_strength=9.4,
    description="DeepSeek-V3/R1: 256 experts, top-8, 58 MoE layers, 8 groups / top-4 groups",
    **_FRONTIER,
), (3.3, 4.6))
_register("kimi-k2", SynthParams(
    num_experts=384, top_k=8, num_layers=60,
    topics=96, cluster_size=3, topic_strength=10.0, families=24, identity_experts=7, identity_strength=9.8,
    description="Kimi K2: 384 experts, top-8, 60 MoE layers, no groups",
    **_FRONTIER,
), (5.0, 6.5))
_register("qwen3-235b", SynthParams(
    num_experts=128, top_k=8, num_layers=94,
    topics=32, cluster_size=3, topic_strength=8.9, families=8, identity_experts=7, identity_strength=8.7,
    description="Qwen3-235B-A22B: 128 experts, top-8, 94 MoE layers, no groups",
    **_FRONTIER,
), (2.7, 3.6))
_register("seed001", SynthParams(
    num_experts=64, top_k=2, num_layers=32,
    topics=16, cluster_size=1, topic_strength=8.2, families=16, identity_experts=2, identity_strength=8.0,
    description="Seed-001 simulation model: 64 experts, top-2, 32 layers (layers assumed)",
    **_FRONTIER,
), (3.8, 5.5))

# Shapes of common open models, for held-out studies across shapes
# (benchmarks/bench_generalise.py). Same routing character as the frontier presets
# (``_FRONTIER``, boosts scaled by ln(E / 64) from esft's, topics 16 per 64 experts,
# clusters and favourites scaled with k); only routed experts are traced (shared experts
# run on every GPU and move no tokens between them). Layer counts are the models' MoE
# layers; skew ranges measured like the others (seeds 0-2, 20k tokens).
_register("qwen1.5-moe", SynthParams(
    num_experts=60, top_k=4, num_layers=24,
    topics=15, cluster_size=2, topic_strength=8.1, families=15, identity_experts=4, identity_strength=7.9,
    description="Qwen1.5-MoE-A2.7B: 60 routed experts top-4 (+4 shared, not traced), 24 layers",
    **_FRONTIER,
), (2.5, 3.5))
_register("olmoe", SynthParams(
    num_experts=64, top_k=8, num_layers=16,
    topics=16, cluster_size=3, topic_strength=8.2, families=4, identity_experts=7, identity_strength=8.0,
    description="OLMoE-1B-7B: 64 experts, top-8, 16 layers",
    **_FRONTIER,
), (2.0, 3.0))
_register("qwen3-30b", SynthParams(
    num_experts=128, top_k=8, num_layers=48,
    topics=32, cluster_size=3, topic_strength=8.9, families=8, identity_experts=7, identity_strength=8.7,
    description="Qwen3-30B-A3B: 128 experts, top-8, 48 layers",
    **_FRONTIER,
), (2.5, 3.5))
_register("mixtral", SynthParams(
    num_experts=8, top_k=2, num_layers=32,
    topics=4, cluster_size=1, topic_strength=6.1, families=2, identity_experts=2, identity_strength=5.9,
    description="Mixtral 8x7B: 8 experts, top-2, 32 layers",
    **_FRONTIER,
), (1.5, 2.5))
_register("deepseek-v2", SynthParams(
    num_experts=160, top_k=6, num_layers=59,
    topics=40, cluster_size=2, topic_strength=9.1, families=10, identity_experts=5, identity_strength=8.9,
    description="DeepSeek-V2: 160 routed experts top-6 (+2 shared, not traced), 59 MoE layers",
    **_FRONTIER,
), (3.3, 4.5))


# ---------------------------------------------------------------- validation


def _check(ok: bool, field: str, message: str, source: str | None = None) -> None:
    if not ok:
        raise InputError(source, field, message)


_KINDS = {"int": int, "float": float, "str": str}


def validate_params(params: SynthParams, source: str | None = None) -> SynthParams:
    """Check every parameter; raise :class:`InputError` naming the field. Returns ``params``."""
    for f in fields(SynthParams):
        value, kind = getattr(params, f.name), _KINDS[f.type if isinstance(f.type, str) else f.type.__name__]
        if kind is int:
            ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
            _check(ok, f.name, f"expected an integer, got {value!r}", source)
        elif kind is float:
            ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            _check(ok and math.isfinite(value), f.name, f"expected a finite number, got {value!r}", source)
        else:
            _check(isinstance(value, str), f.name, f"expected a string, got {value!r}", source)
    p = params

    def at_least(name: str, low: float, high: float | None = None) -> None:
        value = getattr(p, name)
        span = f"{low}..{high}" if high is not None else f">= {low}"
        _check(value >= low and (high is None or value <= high), name, f"expected {span}, got {value}", source)

    at_least("num_experts", 1, 32767)
    at_least("top_k", 1, p.num_experts)
    at_least("num_layers", 1)
    at_least("num_groups", 0, p.num_experts)
    if p.grouped:
        _check(p.num_experts % p.num_groups == 0, "num_groups",
               f"num_experts {p.num_experts} is not a multiple of num_groups {p.num_groups}", source)
        at_least("groups_per_token", 1, p.num_groups)
        size = p.num_experts // p.num_groups
        _check(p.groups_per_token * size >= p.top_k, "groups_per_token",
               f"{p.groups_per_token} group(s) of {size} experts hold fewer than top_k {p.top_k}", source)
    else:
        _check(p.groups_per_token in (0, 1), "groups_per_token",
               f"expected 0 without groups (num_groups <= 1), got {p.groups_per_token}", source)
    at_least("popularity_sigma", 0, 20)
    at_least("popularity_jitter", 0, 5)
    at_least("topics", 1, 1 << 16)
    at_least("cluster_size", 1, p.num_experts)
    at_least("topic_strength", 0, 50)
    at_least("topic_ramp", 0, 1)
    _check(p.topic_concentration > 0, "topic_concentration", f"expected > 0, got {p.topic_concentration}", source)
    _check(0 <= p.persistence < 1, "persistence", f"expected 0 <= persistence < 1, got {p.persistence}", source)
    at_least("families", 1, p.num_experts)
    _check(p.num_experts % p.families == 0, "families",
           f"num_experts {p.num_experts} is not a multiple of families {p.families}", source)
    at_least("locality", 0, 1)
    at_least("vocab_size", 1, 1 << 24)
    at_least("zipf", 0, 10)
    at_least("identity_experts", 0, p.num_experts)
    at_least("identity_strength", 0, 50)
    at_least("identity_decay", 0, 1)
    _check(p.seq_len_median > 0, "seq_len_median", f"expected > 0, got {p.seq_len_median}", source)
    at_least("seq_len_sigma", 0, 10)
    at_least("seq_len_min", 1)
    at_least("seq_len_max", p.seq_len_min)
    at_least("templates", 0, 1 << 16)
    at_least("template_tokens", 1, 1 << 16)
    at_least("drift", 0, 10)
    return params


def preset(name: str, source: str | None = None) -> SynthParams:
    """The named preset; :class:`InputError` listing the presets otherwise."""
    if name not in PRESETS:
        raise InputError(source, "preset", f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[name]


def params_from_mapping(values: Mapping[str, object], source: str | None = None) -> SynthParams:
    """Parameters from a mapping (a TOML ``[synth]`` table).

    ``preset = "NAME"`` starts from that preset and the other keys override it;
    without it ``num_experts``, ``top_k`` and ``num_layers`` are required. Unknown
    keys and bad values raise :class:`InputError`.
    """
    values = dict(values)
    base = preset(str(values.pop("preset")), source) if "preset" in values else None
    known = {f.name for f in fields(SynthParams)}
    for key in values:
        _check(key in known, key, f"unknown parameter; expected one of {', '.join(sorted(known))}", source)
    if base is None:
        for key in ("num_experts", "top_k", "num_layers"):
            _check(key in values, key, "missing (required without a preset)", source)
        params = SynthParams(**values)  # type: ignore[arg-type]
    else:
        params = replace(base, **values)  # type: ignore[arg-type]
    return validate_params(params, source)


def load_params(name_or_path: str | Path) -> SynthParams:
    """A preset name, or a TOML file whose ``[synth]`` table holds parameters
    (optionally ``preset = "NAME"`` plus overrides)."""
    text = str(name_or_path)
    if text in PRESETS:
        return PRESETS[text]
    path = Path(text)
    if path.suffix != ".toml":
        raise InputError(None, "preset", f"unknown preset {text!r}; expected one of {', '.join(PRESETS)} "
                         "or a .toml file")
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(path, None, "no such file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise InputError(path, None, f"not a readable TOML file ({err})") from None
    table = data.get("synth")
    if not isinstance(table, dict):
        raise InputError(path, "synth", "missing [synth] table")
    return params_from_mapping(table, str(path))


def describe(params: SynthParams) -> dict:
    """The parameters as a plain dict (JSON-ready)."""
    return asdict(params)


# ---------------------------------------------------------------- counter-based hashing


def _mix_int(z: int) -> int:
    """splitmix64 finaliser on a Python int (64-bit)."""
    z &= _MASK
    z = ((z ^ (z >> 30)) * _M1) & _MASK
    z = ((z ^ (z >> 27)) * _M2) & _MASK
    return z ^ (z >> 31)


def _derive(key: int, *parts: int) -> int:
    """A 64-bit key derived from ``key`` and integer ``parts``."""
    for part in parts:
        key = _mix_int((key ^ _mix_int(part + _GOLDEN)) + _GOLDEN)
    return key


def _hash(key: int, counter: np.ndarray) -> np.ndarray:
    """uint64 hashes of ``key`` at int64 ``counter`` values (splitmix64 in counter mode)."""
    with np.errstate(over="ignore"):
        z = np.uint64(key) + (counter.astype(np.uint64) + np.uint64(1)) * np.uint64(_GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_M1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_M2)
    return z ^ (z >> np.uint64(31))


def _uniform(key: int, counter: np.ndarray) -> np.ndarray:
    """Uniforms in (0, 1), float64, one per counter."""
    return ((_hash(key, counter) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def _categorical(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draws: cdf [n] ascending to 1, u [m] in (0, 1). Returns [m] int64."""
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1).astype(np.int64)


def _cdf(weights: np.ndarray) -> np.ndarray:
    cdf = np.cumsum(weights / weights.sum())
    cdf[-1] = 1.0
    return cdf


def _alias_table(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vose's alias table of a distribution p [n]: (accept [n] float64, alias [n] int64)."""
    n = len(p)
    scaled = p * n / p.sum()
    accept = np.ones(n)
    alias = np.arange(n, dtype=np.int64)
    small = [i for i in range(n) if scaled[i] < 1.0]
    large = [i for i in range(n) if scaled[i] >= 1.0]
    while small and large:
        s, big = small.pop(), large.pop()
        accept[s], alias[s] = scaled[s], big
        scaled[big] += scaled[s] - 1.0
        (large if scaled[big] >= 1.0 else small).append(big)
    return accept, alias


# ---------------------------------------------------------------- the model tables


@dataclass(frozen=True)
class _Model:
    """The tables of one (params, seed, split); per-layer arrays have L rows.

    base: [L, E] float64 popularity weights (sum 1; drifted for test);
    accept, alias: [L, E] alias tables of ``base`` within each group (alias holds global
    expert ids; without groups one table over all experts); group_w: [L, G] base weight per group
    (G = 1 without groups); clusters: [L, K, C] int64 expert ids; families: [L, F, E / F]
    int64 expert ids; topic_boost: [L] float64;
    ident_boost: [L] float64; noise_salt, vocab_salt: [L] uint64; topic_cdf: [K];
    vocab_cdf: [V]; template_len, template_topic: [templates] int64; world, stream: keys.
    """

    base: np.ndarray
    accept: np.ndarray
    alias: np.ndarray
    group_w: np.ndarray
    clusters: np.ndarray
    families: np.ndarray
    topic_boost: np.ndarray
    ident_boost: np.ndarray
    noise_salt: np.ndarray
    vocab_salt: np.ndarray
    topic_cdf: np.ndarray
    vocab_cdf: np.ndarray
    template_len: np.ndarray
    template_topic: np.ndarray
    world: int
    stream: int


def _build_model(p: SynthParams, seed: int, split: str) -> _Model:
    world = _derive(seed, 0)
    stream = _derive(seed, 1 + SPLITS.index(split))
    test = split == "test"
    L, E, K = p.num_layers, p.num_experts, p.topics
    groups = p.num_groups if p.grouped else 1
    base = np.zeros((L, E))
    accept = np.zeros((L, E))
    alias = np.zeros((L, E), np.int64)
    clusters = np.zeros((L, K, p.cluster_size), np.int64)
    families = np.zeros((L, p.families, E // p.families), np.int64)
    for layer in range(L):
        rng = np.random.default_rng([world, 1, layer])
        sigma = p.popularity_sigma * math.exp(p.popularity_jitter * rng.standard_normal())
        pop = sigma * rng.standard_normal(E)
        families[layer] = rng.permutation(E).reshape(p.families, -1)
        for topic in range(K):  # members from the topic's home family with probability locality
            weights = np.full(E, (1.0 - p.locality) / E + 1e-12)
            weights[families[layer, topic % p.families]] += p.locality / families.shape[2]
            clusters[layer, topic] = rng.choice(E, p.cluster_size, replace=False, p=weights / weights.sum())
        shift = rng.standard_normal(E)
        if test:
            pop = pop + p.drift * sigma * shift
        weights = np.exp(pop - pop.max())
        base[layer] = weights / weights.sum()
        size = E // groups
        for g in range(groups):  # one alias table per group, over the group's experts
            part = slice(g * size, (g + 1) * size)
            accept[layer, part], local = _alias_table(base[layer, part])
            alias[layer, part] = local + g * size
    group_w = base.reshape(L, groups, E // groups).sum(axis=2)
    depth = np.arange(L) / max(L - 1, 1)
    ident_boost = np.exp(p.identity_strength * (1.0 - p.identity_decay * depth))
    rng = np.random.default_rng([world, 2])
    weights = np.maximum(rng.dirichlet(np.full(K, p.topic_concentration)), 1e-300)
    template_topic = _categorical(_cdf(weights), rng.random(max(p.templates, 1)))[: p.templates]
    template_len = rng.integers(-(-p.template_tokens // 4), p.template_tokens + 1, size=p.templates)
    shift = rng.standard_normal(K)
    if test:
        weights = np.exp(np.log(weights) + p.drift * shift)
    vocab = (np.arange(p.vocab_size, dtype=np.float64) + 1.0) ** -p.zipf
    return _Model(
        base=base, accept=accept, alias=alias, group_w=group_w, clusters=clusters, families=families,
        topic_boost=np.exp(p.topic_strength * (1.0 - p.topic_ramp * (1.0 - depth))), ident_boost=ident_boost,
        noise_salt=np.array([_derive(world, 3, layer) for layer in range(L)], np.uint64),
        vocab_salt=np.array([_derive(world, 4, layer) for layer in range(L)], np.uint64),
        topic_cdf=_cdf(weights), vocab_cdf=_cdf(vocab),
        template_len=template_len.astype(np.int64), template_topic=template_topic,
        world=world, stream=stream,
    )


# ---------------------------------------------------------------- sequences and tokens


def _sequence_starts(p: SynthParams, m: _Model, end: int) -> np.ndarray:
    """Start token of every sequence beginning before ``end``, then the next start: [n + 1]."""
    key = _derive(m.stream, 10)
    mean = min(max(p.seq_len_median * math.exp(min(p.seq_len_sigma, 5.0) ** 2 / 2), p.seq_len_min),
               p.seq_len_max)
    count = int(end / mean * 1.1) + 64
    while True:
        z = ndtri(_uniform(key, np.arange(count)))
        lens = np.clip(np.rint(p.seq_len_median * np.exp(p.seq_len_sigma * z)), p.seq_len_min, p.seq_len_max)
        starts = np.concatenate([[0], np.cumsum(lens.astype(np.int64))])
        if starts[-1] >= end:
            return starts[: int(np.searchsorted(starts, end, side="left")) + 1]
        count *= 2


def _token_inputs(p: SynthParams, m: _Model, start: int, stop: int):
    """Per-token inputs of tokens ``start..stop-1`` and the window's sequence lengths.

    Returns (vocab [n] uint64, topic [n] int64, noise_key [n] uint64, seq_lens [s] int64).
    """
    starts = _sequence_starts(p, m, stop)
    first = int(np.searchsorted(starts, start, side="right")) - 1
    lo = int(starts[first])  # work from the start of the first sequence: topics persist
    t = np.arange(lo, stop, dtype=np.int64)
    seq = np.searchsorted(starts, t, side="right") - 1
    pos = t - starts[seq]
    if p.templates:
        template = (_hash(_derive(m.stream, 11), seq) % np.uint64(p.templates)).astype(np.int64)
        tlen = m.template_len[template]
    else:
        template = tlen = np.zeros(len(t), np.int64)
    in_template = pos < tlen
    fresh = in_template | (pos == tlen) | (_uniform(_derive(m.stream, 12), t) >= p.persistence)
    drawn = _categorical(m.topic_cdf, _uniform(_derive(m.stream, 13), t))
    topic = drawn[np.maximum.accumulate(np.where(fresh, np.arange(len(t)), 0))]
    vocab_u = _uniform(_derive(m.stream, 14), t)
    noise_key = _hash(_derive(m.stream, 15), t)
    if in_template.any():
        which = template[in_template]
        slot = which * (1 << 16) + pos[in_template]
        topic[in_template] = m.template_topic[which]
        vocab_u[in_template] = _uniform(_derive(m.world, 16), slot)
        noise_key[in_template] = _hash(_derive(m.world, 17), slot)
    vocab = _categorical(m.vocab_cdf, vocab_u).astype(np.uint64)
    cut = start - lo
    seq_lens = np.diff(np.clip(starts[first:], start, stop))
    return vocab[cut:], topic[cut:], noise_key[cut:], seq_lens[seq_lens > 0].astype(np.int64)


# ---------------------------------------------------------------- the sampler

_U = numba.uint64
_ATTEMPTS = 64


@numba.njit(inline="always")
def _mix(z):  # pragma: no cover - jitted
    z = (z ^ (z >> _U(30))) * _U(_M1)
    z = (z ^ (z >> _U(27))) * _U(_M2)
    return z ^ (z >> _U(31))


@numba.njit(inline="always")
def _unit(r):  # pragma: no cover - jitted
    return numba.float64(numba.int64(r >> _U(11))) * 2.0**-53


@numba.njit(parallel=True, nogil=True, cache=True)
def _route(out, base, accept, alias, group_w, clusters, families, locality, topic_boost, ident_boost, ident_experts,
           vocab, topic, noise_key, noise_salt, vocab_salt, groups_per_token):  # pragma: no cover
    """Fill out [n, L, k] with each token's experts, in draw order (Plackett-Luce)."""
    n, L, k = out.shape
    E = base.shape[1]
    G = group_w.shape[1]
    gsize = E // G
    C = clusters.shape[2]
    F = families.shape[1]
    fsize = families.shape[2]
    cap = C + ident_experts
    block = 256
    for b in numba.prange((n + block - 1) // block):
        mark = np.zeros(E, np.int64)  # == stamp: boosted (slot >= 0) or already drawn (slot -1)
        slot = np.zeros(E, np.int64)
        be = np.empty(cap, np.int64)  # boosted experts: id, weight, base weight, identity applied, taken
        bw = np.empty(cap, np.float64)
        bb = np.empty(cap, np.float64)
        bid = np.empty(cap, np.bool_)
        done = np.empty(cap, np.bool_)
        gw = np.empty(G, np.float64)
        allowed = np.empty(G, np.bool_)
        group = np.arange(E) // gsize
        chosen = np.empty(G, np.int64)  # allowed groups and their cumulative base weight
        cumulative = np.empty(G, np.float64)
        threshold = np.empty(G, np.int64)
        stamp = 0
        for layer in range(L):  # layer-major: one layer's tables stay in L1 across the block
            for t in range(b * block, min(n, (b + 1) * block)):
                vkey = (vocab[t] + _U(1)) * _U(_GOLDEN)
                z = topic[t]
                stamp += 1
                state = _mix(noise_key[t] ^ noise_salt[layer])
                draws = 0
                nb = 0
                for j in range(C):
                    e = clusters[layer, z, j]
                    mark[e] = stamp
                    slot[e] = nb
                    be[nb] = e
                    bb[nb] = base[layer, e]
                    bw[nb] = bb[nb] * topic_boost[layer]
                    bid[nb] = False
                    done[nb] = False
                    nb += 1
                vstate = _mix(vkey ^ vocab_salt[layer])
                boost = ident_boost[layer]
                home = numba.int64(((vstate >> _U(32)) * _U(F)) >> _U(32))
                for j in range(ident_experts):
                    r = _mix(vstate + _U(j + 1) * _U(_GOLDEN))
                    if numba.float64(numba.int64(r & _U(0xFFFFFFFF))) * 2.0**-32 < locality:
                        e = families[layer, home, numba.int64(((r >> _U(32)) * _U(fsize)) >> _U(32))]
                    else:
                        e = numba.int64(((r >> _U(32)) * _U(E)) >> _U(32))
                    if mark[e] == stamp:
                        s = slot[e]
                        if not bid[s]:
                            bw[s] *= boost
                            bid[s] = True
                    else:
                        mark[e] = stamp
                        slot[e] = nb
                        be[nb] = e
                        bb[nb] = base[layer, e]
                        bw[nb] = bb[nb] * boost
                        bid[nb] = True
                        done[nb] = False
                        nb += 1
                # groups: draw groups_per_token of them by total weight, without replacement
                for g in range(G):
                    gw[g] = group_w[layer, g]
                    allowed[g] = G == 1
                if G > 1:
                    total = 1.0
                    for s in range(nb):
                        gw[group[be[s]]] += bw[s] - bb[s]
                        total += bw[s] - bb[s]
                    for _ in range(groups_per_token):
                        draws += 1
                        u = _unit(_mix(state + _U(draws) * _U(_GOLDEN))) * total
                        pick = -1
                        acc = 0.0
                        for g in range(G):
                            if not allowed[g]:
                                acc += gw[g]
                                pick = g
                                if u < acc:
                                    break
                        allowed[pick] = True
                        total -= gw[pick]
                rest = 0.0  # weight of the allowed experts that are neither boosted nor drawn
                na = 0
                for g in range(G):
                    if allowed[g]:
                        rest += group_w[layer, g]
                        chosen[na] = g
                        cumulative[na] = rest
                        na += 1
                for a in range(na):  # group thresholds on a 21-bit scale
                    threshold[a] = numba.int64(cumulative[a] / rest * 2097152.0)
                boosted = 0.0
                for s in range(nb):
                    if allowed[group[be[s]]]:
                        boosted += bw[s]
                        rest -= bb[s]
                    else:
                        done[s] = True
                for i in range(k):
                    rest = max(rest, 0.0)
                    draws += 1
                    u = _unit(_mix(state + _U(draws) * _U(_GOLDEN))) * (boosted + rest)
                    e = -1
                    if u < boosted:
                        acc = 0.0
                        last = -1
                        for s in range(nb):
                            if not done[s]:
                                acc += bw[s]
                                last = s
                                if u < acc:
                                    break
                        if last >= 0:
                            e = be[last]
                            done[last] = True
                            boosted -= bw[last]
                    if e < 0:
                        for _ in range(_ATTEMPTS):
                            draws += 1
                            r = _mix(state + _U(draws) * _U(_GOLDEN))
                            # bits 43-63 pick an allowed group by base weight, 22-42 a column
                            # of its alias table, 0-21 accept the column or take its alias
                            bits = numba.int64(r >> _U(43))
                            a = 0
                            for c in range(na - 1):
                                a += bits >= threshold[c]
                            g = chosen[a]
                            j = g * gsize + numba.int64((((r >> _U(22)) & _U(0x1FFFFF)) * _U(gsize)) >> _U(21))
                            if numba.float64(numba.int64(r & _U(0x3FFFFF))) * 2.0**-22 >= accept[layer, j]:
                                j = alias[layer, j]
                            if mark[j] != stamp:
                                e = j
                                break
                        if e < 0:  # exact scan over every allowed expert still free
                            total = 0.0
                            for j in range(E):
                                if allowed[group[j]]:
                                    if mark[j] != stamp:
                                        total += base[layer, j]
                                    elif slot[j] >= 0 and not done[slot[j]]:
                                        total += bw[slot[j]]
                            draws += 1
                            u = _unit(_mix(state + _U(draws) * _U(_GOLDEN))) * total
                            acc = 0.0
                            for j in range(E):
                                if allowed[group[j]]:
                                    if mark[j] != stamp:
                                        acc += base[layer, j]
                                        e = j
                                    elif slot[j] >= 0 and not done[slot[j]]:
                                        acc += bw[slot[j]]
                                        e = j
                                    if e >= 0 and u < acc:
                                        break
                            if mark[e] == stamp and slot[e] >= 0:
                                done[slot[e]] = True
                                boosted -= bw[slot[e]]
                                e = -e - 1  # flag: boosted, already accounted
                        if e >= 0:
                            mark[e] = stamp
                            slot[e] = -1
                            rest -= base[layer, e]
                        else:
                            e = -e - 1
                    out[t, layer, i] = e


# ---------------------------------------------------------------- public API


MAX_TOKENS = 1 << 32
"""Longest synthetic trace (its sequence starts are held in memory: ~2 MB per 2^25 tokens)."""
MAX_BLOCK_BYTES = 2 << 30
"""Largest expert-id array generated at once (one file, or one shard)."""


def _check_run(p: SynthParams, tokens: int, seed: int, split: str, start: int) -> None:
    validate_params(p)
    _check(isinstance(tokens, (int, np.integer)) and 1 <= tokens <= MAX_TOKENS, "tokens",
           f"expected a count 1..{MAX_TOKENS:,}, got {tokens}")
    _check(isinstance(seed, (int, np.integer)) and 0 <= seed < 1 << 63, "seed", f"expected 0..2**63-1, got {seed}")
    _check(split in SPLITS, "split", f"expected one of {', '.join(SPLITS)}, got {split!r}")
    _check(isinstance(start, (int, np.integer)) and 0 <= start <= MAX_TOKENS, "start",
           f"expected 0..{MAX_TOKENS:,}, got {start}")


def _check_block(p: SynthParams, tokens: int, field: str) -> None:
    """``tokens`` tokens of ids fit :data:`MAX_BLOCK_BYTES` (checked before generating them)."""
    size = int(tokens) * p.num_layers * p.top_k * id_dtype(p.num_experts).itemsize
    _check(size <= MAX_BLOCK_BYTES, field, f"{int(tokens):,} tokens need {size / 2**30:.1f} GiB of expert ids at "
           f"once (limit {MAX_BLOCK_BYTES / 2**30:g} GiB): write shards (shard_tokens) of fewer tokens")


def generate(params: SynthParams, tokens: int, seed: int = 0, split: str = "train", start: int = 0) -> Trace:
    """Tokens ``start .. start + tokens - 1`` of the synthetic trace of (params, seed, split).

    Returns a :class:`Trace`: ``topk_ids`` [tokens, layers, k] (each token's experts in
    draw order, no repeats, group-limited when ``params.num_groups`` > 1) and
    ``seq_lens`` (the sequences clipped to the window). Raises :class:`InputError` on bad
    parameters.
    """
    _check_run(params, tokens, seed, split, start)
    _check_block(params, tokens, "tokens")
    return _generate(params, _build_model(params, int(seed), split), int(start), int(tokens))


def _generate(p: SynthParams, model: _Model, start: int, tokens: int) -> Trace:
    vocab, topic, noise_key, seq_lens = _token_inputs(p, model, start, start + tokens)
    out = np.empty((tokens, p.num_layers, p.top_k), id_dtype(p.num_experts))
    _route(out, model.base, model.accept, model.alias, model.group_w, model.clusters, model.families,
           p.locality, model.topic_boost,
           model.ident_boost, p.identity_experts, vocab, topic, noise_key, model.noise_salt,
           model.vocab_salt, max(p.groups_per_token, 1))
    return Trace(topk_ids=out, num_experts=p.num_experts, seq_lens=seq_lens, checked=True)


def shard_bounds(params: SynthParams, tokens: int, shard_tokens: int, seed: int = 0,
                 split: str = "train") -> list[tuple[int, int]]:
    """Token ranges [lo, hi) of the shards of a ``tokens``-token trace.

    Each shard after the first starts at the first sequence start at or after a multiple
    of ``shard_tokens``, so no sequence straddles two shards; a shard therefore holds
    ``shard_tokens`` plus up to one sequence (or more if a sequence is that long).
    """
    _check_run(params, tokens, seed, split, 0)
    _check(isinstance(shard_tokens, (int, np.integer)) and shard_tokens >= 1, "shard_tokens",
           f"expected a positive count, got {shard_tokens}")
    starts = _sequence_starts(params, _build_model(params, int(seed), split), int(tokens))
    targets = np.arange(int(shard_tokens), int(tokens), int(shard_tokens))
    cuts = starts[np.searchsorted(starts, targets, side="left")]
    edges = np.unique(np.concatenate([[0], cuts[cuts < tokens], [int(tokens)]]))
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges)]


def iter_shards(params: SynthParams, tokens: int, shard_tokens: int, seed: int = 0,
                split: str = "train") -> Iterator[Trace]:
    """The trace of ``generate(params, tokens, seed, split)`` as consecutive shards
    (:func:`shard_bounds`), one in memory at a time."""
    bounds = shard_bounds(params, tokens, shard_tokens, seed, split)
    model = _build_model(params, int(seed), split)
    for lo, hi in bounds:
        yield _generate(params, model, lo, hi - lo)


def write_shards(params: SynthParams, tokens: int, out_dir: str | Path, shard_tokens: int,
                 seed: int = 0, split: str = "train", overwrite: bool = False,
                 progress: ProgressFn | None = None) -> list[Path]:
    """Write the trace as ``out_dir/shard-NNNNN.npz`` plus a manifest, one shard in memory at
    a time.

    The set is written into a hidden folder beside ``out_dir`` and its manifest
    (:data:`placer.trace.MANIFEST`) last; only a complete set is moved into place, so an
    interrupted or failed write (Ctrl-C, a full disk) leaves ``out_dir`` as it was. A
    directory already holding ``.npz`` files is refused unless ``overwrite``; even then
    the old shards are removed only after the new set is in place (files other than shards
    are kept; other ``.npz`` files are always refused: they would join the trace). The set
    reads back with :class:`placer.trace.TraceSource` (concatenated, it equals
    :func:`generate` of ``tokens``). Returns the paths. progress: reports shards written
    (:mod:`placer.progress`).
    """
    out = Path(out_dir)
    bounds = shard_bounds(params, tokens, shard_tokens, seed, split)
    if out.exists() and not out.is_dir():
        raise InputError(out, None, "exists and is not a directory")
    existing = sorted(out.glob("*.npz")) if out.is_dir() else []
    foreign = [f.name for f in existing if not _SHARD_NAME.fullmatch(f.name)]
    if foreign:
        raise InputError(out, None, f"holds .npz files that are not shards ({foreign[0]}); "
                         "choose an empty directory")
    if existing and not overwrite:
        raise InputError(out, None, f"already holds {len(existing)} shard(s); choose an empty "
                         "directory or overwrite")
    _check_block(params, max(hi - lo for lo, hi in bounds), "shard_tokens")
    model = _build_model(params, int(seed), split)
    staging = _staging_dir(out)
    try:
        written = []
        for number, (lo, hi) in enumerate(track(bounds, "writing shards", len(bounds), progress)):
            name = SHARD_PATTERN.format(number)
            save_trace(_generate(params, model, lo, hi - lo), staging / name)
            written.append((name, hi - lo))
        write_shard_manifest(staging, written)
        _swap_in(staging, out)
    except OSError as err:
        raise InputError(out, None, f"cannot write the shard set ({err.strerror or err})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out / name for name, _ in written]


def _staging_dir(out: Path) -> Path:
    """A new hidden folder beside ``out`` (same file system, so the set moves by rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name[:100]}.", suffix=".partial", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # the folder it becomes gets the usual permissions, not mkdtemp's 0700
        return staging
    except OSError as err:
        raise InputError(out, None, f"cannot write ({err.strerror or err})") from None


def _swap_in(staging: Path, out: Path) -> None:
    """Move the complete shard set ``staging`` to ``out``. An existing ``out`` is first renamed
    aside (a crash then leaves it whole under its hidden name), its files other than shards
    and manifest are carried over, and it is deleted last."""
    if not out.exists():
        os.rename(staging, out)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{out.name[:100]}.", suffix=".old", dir=out.parent))
    os.rename(out, aside / "set")
    os.rename(staging, out)
    for kept in (aside / "set").iterdir():
        if not (_SHARD_NAME.fullmatch(kept.name) or kept.name == MANIFEST):
            os.rename(kept, out / kept.name)
    shutil.rmtree(aside, ignore_errors=True)


def phased(params: SynthParams, tokens: int, phases: int, seed: int = 0, drift_step: float = 1.0) -> Trace:
    """A time-ordered stream with phase changes: ``tokens`` split into ``phases`` equal runs
    (the first ones one token longer when they do not divide); phase 0 is the train split,
    phase p >= 1 the test split of ``params`` with ``drift = p * drift_step`` (topic weights
    and expert popularity moved p steps along one direction; the co-activation clusters stay),
    each drawn from its own token positions (no phase repeats another's tokens). Sequence
    lengths are kept per phase. Raises InputError on bad counts."""
    _check(isinstance(phases, (int, np.integer)) and phases >= 1, "phases", f"expected >= 1, got {phases}")
    _check(isinstance(tokens, (int, np.integer)) and tokens >= phases, "tokens",
           f"expected at least one token per phase ({phases}), got {tokens}")
    _check(math.isfinite(drift_step) and drift_step >= 0, "drift_step", f"expected >= 0, got {drift_step}")
    sizes = [tokens // phases + (p < tokens % phases) for p in range(phases)]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist()
    parts = [generate(params if p == 0 else replace(params, drift=p * drift_step), size, seed,
                      "train" if p == 0 else "test", start)
             for p, (size, start) in enumerate(zip(sizes, starts))]
    return Trace(topk_ids=np.concatenate([t.topk_ids for t in parts]), num_experts=params.num_experts,
                 seq_lens=np.concatenate([t.seq_lens for t in parts]))


def write_trace(params: SynthParams, tokens: int, out: str | Path, seed: int = 0, split: str = "train",
                shard_tokens: int | None = None, overwrite: bool = False,
                progress: ProgressFn | None = None) -> list[Path]:
    """Write a trace: to the file ``out`` if it ends in ``.npz`` and ``shard_tokens`` is
    None, else as shards of ``shard_tokens`` (default 1,048,576) in the directory ``out``
    (progress: shards written)."""
    out = Path(out)
    if shard_tokens is None and out.suffix == ".npz":
        if out.exists() and not overwrite:
            raise InputError(out, None, "already exists; choose another name or overwrite")
        save_trace(generate(params, tokens, seed, split), out)
        return [out]
    return write_shards(params, tokens, out, 1 << 20 if shard_tokens is None else shard_tokens, seed, split,
                        overwrite, progress)
