"""Synthetic routing traces calibrated to real ones (``placer synth``).

Real traces of frontier-size models are not public, so this module generates
them from a small latent model whose knobs map onto what real traces show.

The model (per MoE layer ``l``, token ``t``)
-------------------------------------------
Every token carries a *vocabulary item* ``v_t`` (Zipf-distributed: frequent
tokens recur and, like ``the`` in a real model, route the same way every time)
and a *topic* ``z_t`` (a cluster of co-activated experts; topics persist along a
sequence). The router score of expert ``e`` is::

    x[t, l, e] = pop[l, e]                          expert popularity (log scale)
               + topic_strength * [e in cluster(l, z_t)]   co-activation clusters
               + ident[l] * N(l, v_t, e)             token identity, N ~ Normal(0, 1)
               + G(t, l, e)                          Gumbel(0, 1) noise

and the token's experts are the ``top_k`` largest scores. Top-k of log-weights
plus Gumbel noise is sampling ``top_k`` experts without replacement from
``softmax(pop + topic + identity)`` (Plackett-Luce), so every non-noise term is
on the log-probability scale. With group-limited routing (``num_groups`` > 1,
DeepSeek-V3 style) the experts are split into ``num_groups`` contiguous groups,
each group is scored by the sum of its two best scores, and only the best
``groups_per_token`` groups compete for the top-k.

* Per-layer variation: every layer draws its own popularity vector (with its own
  spread, ``popularity_sigma`` scaled by a per-layer log-normal factor of
  ``popularity_jitter``), its own expert clusters and its own identity vectors;
  the identity strength falls linearly with depth (``identity_decay``).
* Sequences: lengths are log-normal. Each sequence may open with one of
  ``templates`` fixed prompts (a system prompt, an instruction) whose tokens route
  identically every time they occur, as in real evaluation traces.
* Topic persistence: after the template a sequence starts a topic segment; each
  following token keeps the segment's topic with probability ``persistence``,
  otherwise it starts a new segment with a fresh topic drawn from the topic
  mixture weights (Dirichlet(``topic_concentration``) over ``topics``).
* Drift: the ``test`` split perturbs the log topic weights by ``drift`` x N(0, 1)
  and each layer's popularity by ``drift`` x (that layer's spread) x N(0, 1); the
  ``train`` split is unperturbed. Both splits share everything else (the
  "model": clusters, identity vectors, templates) but draw different tokens.

Reproducibility and streaming
-----------------------------
All randomness is counter-based: a token's draws are hashes of (seed, split,
global token index, layer, expert), the model tables are drawn per layer from
``(seed, layer)``. Any window of a trace can therefore be generated on its own
(:func:`generate` with ``start``) and equals the same rows of a larger trace;
:func:`write_shards` writes a trace shard by shard in bounded memory, and the
concatenated shards equal :func:`generate` of the whole token count. Layer
``l`` of a preset does not depend on how many later layers are generated
except through ``identity_decay`` (which depends on the layer's relative depth).
The routing kernel is compiled with numba (parallel over tokens); a pure numpy
path gives bit-identical results and serves as the reference.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
from scipy.special import ndtri

from placer.errors import InputError
from placer.trace import Trace, id_dtype, save_trace

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency, the numpy path is the fallback
    numba = None

SPLITS = ("train", "test")
SHARD_PATTERN = "shard-{:05d}.npz"
SHARD_GLOB = "shard-*.npz"
_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_TABLE_BITS = 16


@dataclass(frozen=True)
class SynthParams:
    """Parameters of the synthetic trace generator (see the module docstring for the model).

    Shape:
      num_experts: routed experts per layer (E).
      top_k: experts per token (k).
      num_layers: MoE layers.
      num_groups: expert groups for group-limited routing (contiguous, E / num_groups
        experts each); 0 or 1 = no group limit.
      groups_per_token: groups a token may use (DeepSeek-V3: 4 of 8); 0 when ungrouped.

    Expert popularity (load skew, entropy):
      popularity_sigma: standard deviation of the per-expert log-popularity ``pop[l, e]``;
        0 = all experts equally popular. Mostly sets the max/mean load skew.
      popularity_jitter: per-layer variation of that spread: layer ``l`` uses
        ``popularity_sigma * exp(popularity_jitter * N(0, 1))``.

    Co-activation clusters:
      topics: latent topics (co-activation clusters) per layer.
      cluster_size: experts in each topic's cluster (a random subset per topic and layer).
      topic_strength: log-weight added to the experts of the token's topic cluster;
        0 = no clusters. Sets how much a partitioner can gain (the co-activation strength).
      topic_concentration: Dirichlet concentration of the topic mixture weights
        (small = a few dominant topics, large = near-uniform).
      persistence: probability that a token keeps the previous token's topic within a
        sequence (adjacent tokens then share experts).

    Token identity (repeated top-k sets, distinct-set share):
      vocab_size: vocabulary items; item ``v`` (0-based) has frequency ~ (v + 1) ** -zipf.
      zipf: Zipf exponent of the vocabulary.
      identity_strength: scale of the per-item Normal(0, 1) expert log-weights at the
        first layer; large = a token's experts are fixed by what the token is.
      identity_decay: relative drop of the identity strength from the first to the last
        layer (0 = constant, 1 = none at the last layer).

    Sequences and prompt templates:
      seq_len_median, seq_len_sigma: log-normal sequence lengths (median, log-space sd).
      seq_len_min, seq_len_max: clip of the sequence lengths.
      templates: fixed prompt prefixes; each sequence opens with one, drawn uniformly
        (0 = none).
      template_tokens: longest template; template lengths are drawn uniformly in
        [ceil(template_tokens / 4), template_tokens].

    Domain drift:
      drift: perturbation of the ``test`` split (topic log-weights by drift x N(0, 1),
        popularity by drift x layer spread x N(0, 1)); 0 = test drawn like train.

    description: one line shown by ``placer synth --list``.
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
    topic_concentration: float = 2.0
    persistence: float = 0.8
    vocab_size: int = 4096
    zipf: float = 1.0
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


# The ``esft`` preset is calibrated against the ESFT DeepSeek-V2-Lite traces
# (benchmarks/bench_synth_calibration.py). The frontier presets keep its routing
# character (identity, topics, persistence; cluster size scaled with k) and
# set the shape of each model; their popularity spread aims at a max/mean
# skew of roughly 3-6 (PRESET_SKEW). FROZEN: do not retune after floors are measured.
PRESETS: dict[str, SynthParams] = {}
PRESET_SKEW: dict[str, tuple[float, float]] = {}
"""Per preset, the range its mean per-layer max/mean load skew lies in (train split,
seed 0, from 20k tokens upward; tests check it)."""


def _register(name: str, params: SynthParams, skew: tuple[float, float]) -> None:
    PRESETS[name] = params
    PRESET_SKEW[name] = skew


_ESFT = SynthParams(
    num_experts=64, top_k=6, num_layers=26,
    popularity_sigma=0.5, popularity_jitter=0.2,
    topics=16, cluster_size=8, topic_strength=1.5, topic_concentration=2.0, persistence=0.8,
    vocab_size=4096, zipf=1.0, identity_strength=1.0, identity_decay=0.5,
    seq_len_median=72.0, seq_len_sigma=1.2, seq_len_min=48, seq_len_max=2048,
    templates=4, template_tokens=20, drift=0.05,
    description="DeepSeek-V2-Lite on the ESFT tasks: 64 experts, top-6, 26 layers (calibrated)",
)
_register("esft", _ESFT, (2.0, 3.6))


# ---------------------------------------------------------------- validation


def _check(ok: bool, field: str, message: str, source: str | None = None) -> None:
    if not ok:
        raise InputError(source, field, message)


def validate_params(params: SynthParams, source: str | None = None) -> SynthParams:
    """Check every parameter; raise :class:`InputError` naming the field. Returns ``params``."""
    for f in fields(SynthParams):
        value = getattr(params, f.name)
        if f.type == "int" or f.type is int:
            _check(isinstance(value, (int, np.integer)) and not isinstance(value, bool), f.name,
                   f"expected an integer, got {value!r}", source)
        elif f.type == "float" or f.type is float:
            _check(isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
                   and math.isfinite(value), f.name, f"expected a finite number, got {value!r}", source)
        elif f.type == "str" or f.type is str:
            _check(isinstance(value, str), f.name, f"expected a string, got {value!r}", source)
    p = params
    _check(1 <= p.num_experts <= 32767, "num_experts", f"expected 1..32767, got {p.num_experts}", source)
    _check(1 <= p.top_k <= p.num_experts, "top_k", f"expected 1..num_experts ({p.num_experts}), got {p.top_k}", source)
    _check(p.num_layers >= 1, "num_layers", f"expected a positive count, got {p.num_layers}", source)
    _check(p.num_groups >= 0, "num_groups", f"expected >= 0, got {p.num_groups}", source)
    if p.grouped:
        _check(p.num_experts % p.num_groups == 0, "num_groups",
               f"num_experts {p.num_experts} is not a multiple of num_groups {p.num_groups}", source)
        _check(1 <= p.groups_per_token <= p.num_groups, "groups_per_token",
               f"expected 1..num_groups ({p.num_groups}), got {p.groups_per_token}", source)
        size = p.num_experts // p.num_groups
        _check(p.groups_per_token * size >= p.top_k, "groups_per_token",
               f"{p.groups_per_token} groups of {size} experts hold fewer than top_k {p.top_k}", source)
    else:
        _check(p.groups_per_token in (0, 1), "groups_per_token",
               f"expected 0 without groups (num_groups <= 1), got {p.groups_per_token}", source)
    _check(p.popularity_sigma >= 0, "popularity_sigma", f"expected >= 0, got {p.popularity_sigma}", source)
    _check(p.popularity_jitter >= 0, "popularity_jitter", f"expected >= 0, got {p.popularity_jitter}", source)
    _check(p.topics >= 1, "topics", f"expected a positive count, got {p.topics}", source)
    _check(1 <= p.cluster_size <= p.num_experts, "cluster_size",
           f"expected 1..num_experts ({p.num_experts}), got {p.cluster_size}", source)
    _check(p.topic_strength >= 0, "topic_strength", f"expected >= 0, got {p.topic_strength}", source)
    _check(p.topic_concentration > 0, "topic_concentration", f"expected > 0, got {p.topic_concentration}", source)
    _check(0 <= p.persistence < 1, "persistence", f"expected 0 <= persistence < 1, got {p.persistence}", source)
    _check(1 <= p.vocab_size <= 1 << 24, "vocab_size", f"expected 1..{1 << 24}, got {p.vocab_size}", source)
    _check(p.zipf >= 0, "zipf", f"expected >= 0, got {p.zipf}", source)
    _check(p.identity_strength >= 0, "identity_strength", f"expected >= 0, got {p.identity_strength}", source)
    _check(0 <= p.identity_decay <= 1, "identity_decay", f"expected 0..1, got {p.identity_decay}", source)
    _check(p.seq_len_min >= 1, "seq_len_min", f"expected a positive length, got {p.seq_len_min}", source)
    _check(p.seq_len_max >= p.seq_len_min, "seq_len_max",
           f"expected >= seq_len_min ({p.seq_len_min}), got {p.seq_len_max}", source)
    _check(p.seq_len_median > 0, "seq_len_median", f"expected > 0, got {p.seq_len_median}", source)
    _check(p.seq_len_sigma >= 0, "seq_len_sigma", f"expected >= 0, got {p.seq_len_sigma}", source)
    _check(0 <= p.templates <= 1 << 16, "templates", f"expected 0..65536, got {p.templates}", source)
    _check(1 <= p.template_tokens <= 1 << 16, "template_tokens",
           f"expected 1..65536, got {p.template_tokens}", source)
    _check(p.drift >= 0, "drift", f"expected >= 0, got {p.drift}", source)
    return params


def params_from_mapping(values: Mapping[str, object], source: str | None = None,
                        base: SynthParams | None = None) -> SynthParams:
    """Build parameters from a mapping (a TOML ``[synth]`` table), on top of ``base``.

    A ``preset = "NAME"`` key starts from that preset; unknown keys are errors.
    """
    values = dict(values)
    if "preset" in values:
        name = values.pop("preset")
        base = preset(str(name), source)
    known = {f.name for f in fields(SynthParams)}
    for key in values:
        _check(key in known, key, f"unknown parameter; expected one of {', '.join(sorted(known))}", source)
    if base is None:
        for key in ("num_experts", "top_k", "num_layers"):
            _check(key in values, key, "missing (required without a preset)", source)
        try:
            params = SynthParams(**values)  # type: ignore[arg-type]
        except TypeError as err:  # pragma: no cover - keys are checked above
            raise InputError(source, None, str(err)) from None
    else:
        params = replace(base, **values)  # type: ignore[arg-type]
    return validate_params(params, source)


def preset(name: str, source: str | None = None) -> SynthParams:
    """The named preset; :class:`InputError` listing the presets otherwise."""
    if name not in PRESETS:
        raise InputError(source, "preset", f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[name]


def load_params(name_or_path: str | Path) -> SynthParams:
    """A preset name, or a TOML file with a ``[synth]`` table (optionally ``preset = NAME``
    plus overrides)."""
    text = str(name_or_path)
    if text in PRESETS:
        return PRESETS[text]
    path = Path(text)
    if not path.suffix == ".toml" and not path.exists():
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


def _mix_np(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(_M1)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(_M2)
    return z ^ (z >> np.uint64(31))


def _hash(key: int, counter: np.ndarray) -> np.ndarray:
    """uint64 hashes of ``key`` at int64 ``counter`` values (splitmix64 in counter mode)."""
    with np.errstate(over="ignore"):
        return _mix_np(np.uint64(key) + (counter.astype(np.uint64) + np.uint64(1)) * np.uint64(_GOLDEN))


def _uniform(key: int, counter: np.ndarray) -> np.ndarray:
    """Uniforms in (0, 1), float64, one per counter."""
    return ((_hash(key, counter) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def _categorical(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draws: cdf [n] ascending ending at 1, u [m] in (0, 1). Returns [m] int64."""
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1).astype(np.int64)


_QUANTILES = (np.arange(1 << _TABLE_BITS, dtype=np.float64) + 0.5) / (1 << _TABLE_BITS)
_GUMBEL_TABLE = (-np.log(-np.log(_QUANTILES))).astype(np.float32)
_NORMAL_TABLE = ndtri(_QUANTILES).astype(np.float32)


# ---------------------------------------------------------------- the model tables


@dataclass(frozen=True)
class _Model:
    """Per-layer tables shared by both splits, and the split's mixture and popularity.

    pop: [L, E] float32 log-popularity (drifted for test); aff: [L, K, E] float32;
    ident: [L] float32; noise_salt, vocab_salt: [L] uint64; topic_cdf: [K];
    vocab_cdf: [V]; template_len: [templates] int64; template_topic: [templates] int64.
    """

    pop: np.ndarray
    aff: np.ndarray
    ident: np.ndarray
    noise_salt: np.ndarray
    vocab_salt: np.ndarray
    topic_cdf: np.ndarray
    vocab_cdf: np.ndarray
    template_len: np.ndarray
    template_topic: np.ndarray
    world: int
    stream: int


def _cdf(weights: np.ndarray) -> np.ndarray:
    cdf = np.cumsum(weights / weights.sum())
    cdf[-1] = 1.0
    return cdf


def _build_model(p: SynthParams, seed: int, split: str) -> _Model:
    world = _derive(seed, 0)
    stream = _derive(seed, 1 + SPLITS.index(split))
    test = split == "test"
    L, E, K = p.num_layers, p.num_experts, p.topics
    pop = np.zeros((L, E), np.float32)
    aff = np.zeros((L, K, E), np.float32)
    for layer in range(L):
        rng = np.random.default_rng([world, 1, layer])
        sigma = p.popularity_sigma * math.exp(p.popularity_jitter * rng.standard_normal())
        base = sigma * rng.standard_normal(E)
        base -= base.mean()
        for topic in range(K):
            aff[layer, topic, rng.choice(E, p.cluster_size, replace=False)] = p.topic_strength
        shift = rng.standard_normal(E)
        pop[layer] = base + (p.drift * sigma * shift if test else 0.0)
    depth = np.arange(L) / max(L - 1, 1)
    ident = (p.identity_strength * (1.0 - p.identity_decay * depth)).astype(np.float32)
    rng = np.random.default_rng([world, 2])
    weights = rng.dirichlet(np.full(K, p.topic_concentration))
    weights = np.maximum(weights, 1e-300)
    template_topic = _categorical(_cdf(weights), rng.random(max(p.templates, 1)))[: p.templates]
    low = -(-p.template_tokens // 4)
    template_len = rng.integers(low, p.template_tokens + 1, size=p.templates).astype(np.int64)
    shift = rng.standard_normal(K)
    if test:
        weights = np.exp(np.log(weights) + p.drift * shift)
    vocab = (np.arange(p.vocab_size, dtype=np.float64) + 1.0) ** -p.zipf
    return _Model(
        pop=pop, aff=aff, ident=ident,
        noise_salt=np.array([_derive(world, 3, layer) for layer in range(L)], np.uint64),
        vocab_salt=np.array([_derive(world, 4, layer) for layer in range(L)], np.uint64),
        topic_cdf=_cdf(weights), vocab_cdf=_cdf(vocab),
        template_len=template_len, template_topic=template_topic, world=world, stream=stream,
    )


# ---------------------------------------------------------------- sequences and tokens


def _sequence_starts(p: SynthParams, m: _Model, end: int) -> np.ndarray:
    """Start token of every sequence beginning before ``end``, plus the next start: [n + 1]."""
    key = _derive(m.stream, 10)
    mean = p.seq_len_median * math.exp(p.seq_len_sigma**2 / 2)
    count = max(16, int(end / max(min(mean, p.seq_len_max), p.seq_len_min) * 1.2) + 16)
    while True:
        z = ndtri(_uniform(key, np.arange(count)))
        lens = np.clip(np.rint(p.seq_len_median * np.exp(p.seq_len_sigma * z)), p.seq_len_min, p.seq_len_max)
        starts = np.concatenate([[0], np.cumsum(lens.astype(np.int64))])
        if starts[-1] >= end:
            n = int(np.searchsorted(starts, end, side="left"))  # sequences 0..n-1 start before end
            return starts[: n + 1]
        count *= 2


def _token_inputs(p: SynthParams, m: _Model, start: int, stop: int):
    """Per-token model inputs for tokens ``start..stop-1`` and the window's seq_lens.

    Returns (vocab [n] uint64, topic [n] int64, noise_key [n] uint64, seq_lens [s] int64).
    """
    starts = _sequence_starts(p, m, stop)
    first = int(np.searchsorted(starts, start, side="right")) - 1
    lo = int(starts[first])
    t = np.arange(lo, stop, dtype=np.int64)
    seq = np.searchsorted(starts, t, side="right") - 1
    pos = t - starts[seq]
    if p.templates:
        template = (_hash(_derive(m.stream, 11), seq) % np.uint64(p.templates)).astype(np.int64)
        tlen = m.template_len[template]
    else:
        template = np.zeros(len(t), np.int64)
        tlen = np.zeros(len(t), np.int64)
    in_template = pos < tlen
    # topic segments: a new segment right after the template and wherever persistence fails
    fresh = (pos == tlen) | (_uniform(_derive(m.stream, 12), t) >= p.persistence) | in_template
    drawn = _categorical(m.topic_cdf, _uniform(_derive(m.stream, 13), t))
    last = np.maximum.accumulate(np.where(fresh, np.arange(len(t)), 0))
    topic = drawn[last]
    vocab_u = _uniform(_derive(m.stream, 14), t)
    noise_key = _hash(_derive(m.stream, 15), t)
    if p.templates and in_template.any():
        slot = template[in_template] * (1 << 16) + pos[in_template]
        topic[in_template] = m.template_topic[template[in_template]]
        vocab_u[in_template] = _uniform(_derive(m.world, 16), slot)
        noise_key[in_template] = _hash(_derive(m.world, 17), slot)
    vocab = _categorical(m.vocab_cdf, vocab_u).astype(np.uint64)
    cut = start - lo
    bounds = np.clip(starts[first:], start, stop)
    seq_lens = np.diff(bounds)
    return vocab[cut:], topic[cut:], noise_key[cut:], seq_lens[seq_lens > 0].astype(np.int64)


# ---------------------------------------------------------------- the routing kernel


def _route_numpy(out, pop, aff, ident, vocab, topic, noise_key, noise_salt, vocab_salt,
                 normal_table, gumbel_table, num_groups, groups_per_token):
    """Reference routing: fills out [n, L, k] with each token's experts, best first."""
    n, L, k = out.shape
    E = pop.shape[1]
    words = -(-E // 4)
    shifts = np.array([0, 16, 32, 48], np.uint64)
    step = (np.arange(words, dtype=np.uint64) + np.uint64(1)) * np.uint64(_GOLDEN)
    with np.errstate(over="ignore"):
        vkey = (vocab + np.uint64(1)) * np.uint64(_GOLDEN)
        for layer in range(L):
            noise_state = _mix_np(noise_key ^ noise_salt[layer])
            vocab_state = _mix_np(vkey ^ vocab_salt[layer])
            g = (_mix_np(noise_state[:, None] + step[None, :])[:, :, None] >> shifts) & np.uint64(0xFFFF)
            v = (_mix_np(vocab_state[:, None] + step[None, :])[:, :, None] >> shifts) & np.uint64(0xFFFF)
            g = g.reshape(n, -1)[:, :E].astype(np.intp)
            v = v.reshape(n, -1)[:, :E].astype(np.intp)
            x = pop[layer][None, :] + aff[layer][topic]
            x = x + ident[layer] * normal_table[v]
            x = x + gumbel_table[g]
            if num_groups > 1:
                grouped = x.reshape(n, num_groups, -1)
                best = -np.sort(-grouped, axis=2)
                score = best[:, :, 0] + best[:, :, 1] if grouped.shape[2] > 1 else best[:, :, 0]
                keep = np.argsort(-score, axis=1, kind="stable")[:, :groups_per_token]
                mask = np.zeros((n, num_groups), bool)
                np.put_along_axis(mask, keep, True, axis=1)
                x = np.where(np.repeat(mask, E // num_groups, axis=1), x, np.float32(-np.inf))
            out[:, layer, :] = np.argsort(-x, axis=1, kind="stable")[:, :k]


if numba is not None:
    _U = numba.uint64

    @numba.njit(inline="always")
    def _mix_nb(z):  # pragma: no cover - jitted
        z = (z ^ (z >> _U(30))) * _U(_M1)
        z = (z ^ (z >> _U(27))) * _U(_M2)
        return z ^ (z >> _U(31))

    @numba.njit(parallel=True, nogil=True, cache=True)
    def _route_numba(out, pop, aff, ident, vocab, topic, noise_key, noise_salt, vocab_salt,
                     normal_table, gumbel_table, num_groups, groups_per_token):  # pragma: no cover
        n, L, k = out.shape
        E = pop.shape[1]
        words = (E + 3) // 4
        block = 512
        blocks = (n + block - 1) // block
        grouped = num_groups > 1
        size = E // num_groups if grouped else E
        neg = np.float32(-np.inf)
        for b in numba.prange(blocks):
            x = np.empty(words * 4, np.float32)
            vals = np.empty(k, np.float32)
            idx = np.empty(k, np.int64)
            gvals = np.empty(max(groups_per_token, 1), np.float32)
            gidx = np.empty(max(groups_per_token, 1), np.int64)
            allowed = np.zeros(max(num_groups, 1), np.bool_)
            for t in range(b * block, min(n, (b + 1) * block)):
                vkey = (vocab[t] + _U(1)) * _U(_GOLDEN)
                z = topic[t]
                for layer in range(L):
                    ns = _mix_nb(noise_key[t] ^ noise_salt[layer])
                    vs = _mix_nb(vkey ^ vocab_salt[layer])
                    s = ident[layer]
                    for w in range(words):
                        step = _U(w + 1) * _U(_GOLDEN)
                        g = _mix_nb(ns + step)
                        v = _mix_nb(vs + step)
                        for j in range(4):
                            e = w * 4 + j
                            if e < E:
                                shift = _U(16 * j)
                                gi = (g >> shift) & _U(0xFFFF)
                                vi = (v >> shift) & _U(0xFFFF)
                                x[e] = (pop[layer, e] + aff[layer, z, e]) + s * normal_table[vi] + gumbel_table[gi]
                    if grouped:
                        for i in range(groups_per_token):
                            gvals[i] = neg
                            gidx[i] = -1
                        for grp in range(num_groups):
                            m1 = neg
                            m2 = neg
                            for e in range(grp * size, (grp + 1) * size):
                                if x[e] > m1:
                                    m2 = m1
                                    m1 = x[e]
                                elif x[e] > m2:
                                    m2 = x[e]
                            score = m1 + m2 if size > 1 else m1
                            if gidx[groups_per_token - 1] < 0 or score > gvals[groups_per_token - 1]:
                                pos = groups_per_token - 1
                                while pos > 0 and (gidx[pos - 1] < 0 or gvals[pos - 1] < score):
                                    gvals[pos] = gvals[pos - 1]
                                    gidx[pos] = gidx[pos - 1]
                                    pos -= 1
                                gvals[pos] = score
                                gidx[pos] = grp
                        for grp in range(num_groups):
                            allowed[grp] = False
                        for i in range(groups_per_token):
                            allowed[gidx[i]] = True
                    for i in range(k):
                        vals[i] = neg
                        idx[i] = -1
                    for e in range(E):
                        if grouped and not allowed[e // size]:
                            continue
                        xe = x[e]
                        if idx[k - 1] < 0 or xe > vals[k - 1]:
                            pos = k - 1
                            while pos > 0 and (idx[pos - 1] < 0 or vals[pos - 1] < xe):
                                vals[pos] = vals[pos - 1]
                                idx[pos] = idx[pos - 1]
                                pos -= 1
                            vals[pos] = xe
                            idx[pos] = e
                    for i in range(k):
                        out[t, layer, i] = idx[i]


def _check_run(p: SynthParams, tokens: int, seed: int, split: str, start: int) -> None:
    validate_params(p)
    _check(isinstance(tokens, (int, np.integer)) and tokens >= 1, "tokens", f"expected a positive count, got {tokens}")
    _check(isinstance(seed, (int, np.integer)) and 0 <= seed < 1 << 63, "seed", f"expected 0..2**63-1, got {seed}")
    _check(split in SPLITS, "split", f"expected one of {', '.join(SPLITS)}, got {split!r}")
    _check(isinstance(start, (int, np.integer)) and start >= 0, "start", f"expected >= 0, got {start}")


def generate(params: SynthParams, tokens: int, seed: int = 0, split: str = "train",
             start: int = 0, engine: str = "auto") -> Trace:
    """Tokens ``start .. start + tokens - 1`` of the synthetic trace (``params``, ``seed``, ``split``).

    Returns a :class:`Trace` with ``topk_ids`` [tokens, layers, k] (each token's experts
    best first) and ``seq_lens`` (the sequences clipped to the window). ``engine``:
    ``"auto"`` (numba when installed), ``"numba"`` or ``"numpy"`` (the reference; same result).
    """
    _check_run(params, tokens, seed, split, start)
    model = _build_model(params, int(seed), split)
    return _generate(params, model, int(start), int(tokens), engine)


def _generate(p: SynthParams, model: _Model, start: int, tokens: int, engine: str = "auto") -> Trace:
    vocab, topic, noise_key, seq_lens = _token_inputs(p, model, start, start + tokens)
    out = np.empty((tokens, p.num_layers, p.top_k), id_dtype(p.num_experts))
    use_numba = engine == "numba" or (engine == "auto" and numba is not None)
    _check(engine in ("auto", "numba", "numpy"), "engine", f"expected auto, numba or numpy, got {engine!r}")
    if use_numba:
        _check(numba is not None, "engine", "numba is not installed")
        _route_numba(out, model.pop, model.aff, model.ident, vocab, topic, noise_key, model.noise_salt,
                     model.vocab_salt, _NORMAL_TABLE, _GUMBEL_TABLE, p.num_groups, p.groups_per_token)
    else:
        step = 4096  # bound the numpy path's temporaries
        for lo in range(0, tokens, step):
            hi = min(tokens, lo + step)
            _route_numpy(out[lo:hi], model.pop, model.aff, model.ident, vocab[lo:hi], topic[lo:hi],
                         noise_key[lo:hi], model.noise_salt, model.vocab_salt, _NORMAL_TABLE,
                         _GUMBEL_TABLE, p.num_groups, p.groups_per_token)
    return Trace(topk_ids=out, num_experts=p.num_experts, seq_lens=seq_lens)


def shard_bounds(params: SynthParams, tokens: int, shard_tokens: int, seed: int = 0,
                 split: str = "train") -> list[tuple[int, int]]:
    """Token ranges of the shards: each cut at the first sequence start at or after a
    multiple of ``shard_tokens`` (so no sequence straddles two shards; sizes vary by up
    to one sequence, and a sequence longer than ``shard_tokens`` makes a longer shard)."""
    _check_run(params, tokens, seed, split, 0)
    _check(isinstance(shard_tokens, (int, np.integer)) and shard_tokens >= 1, "shard_tokens",
           f"expected a positive count, got {shard_tokens}")
    model = _build_model(params, int(seed), split)
    return _shard_bounds(params, model, int(tokens), int(shard_tokens))


def _shard_bounds(p: SynthParams, model: _Model, tokens: int, shard_tokens: int) -> list[tuple[int, int]]:
    starts = _sequence_starts(p, model, tokens)
    targets = np.arange(shard_tokens, tokens, shard_tokens)
    cuts = starts[np.searchsorted(starts, targets, side="left").clip(max=len(starts) - 1)]
    edges = np.unique(np.concatenate([[0], cuts[cuts < tokens], [tokens]]))
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def iter_shards(params: SynthParams, tokens: int, shard_tokens: int, seed: int = 0,
                split: str = "train") -> Iterator[Trace]:
    """The trace of :func:`generate` (``start=0``) as consecutive shards (see :func:`shard_bounds`)."""
    bounds = shard_bounds(params, tokens, shard_tokens, seed, split)
    model = _build_model(params, int(seed), split)
    for lo, hi in bounds:
        yield _generate(params, model, lo, hi - lo)


def write_shards(params: SynthParams, tokens: int, out_dir: str | Path, shard_tokens: int,
                 seed: int = 0, split: str = "train", overwrite: bool = False) -> list[Path]:
    """Write the trace as ``out_dir/shard-NNNNN.npz``, one shard in memory at a time.

    Each shard is written atomically (:func:`placer.trace.save_trace`); the directory
    reads back with :class:`placer.trace.TraceSource`. A directory already holding
    ``.npz`` files is refused unless ``overwrite``, which first removes its
    ``shard-*.npz`` files (other ``.npz`` files are still refused: they would join the trace).
    Returns the shard paths in order.
    """
    out = Path(out_dir)
    bounds = shard_bounds(params, tokens, shard_tokens, seed, split)
    if out.exists() and not out.is_dir():
        raise InputError(out, None, "exists and is not a directory")
    existing = sorted(out.glob("*.npz")) if out.is_dir() else []
    if existing:
        if not overwrite:
            raise InputError(out, None, f"already holds {len(existing)} .npz file(s); choose an empty "
                             "directory or overwrite")
        foreign = [f for f in existing if not re.fullmatch(r"shard-\d+\.npz", f.name)]
        if foreign:
            raise InputError(out, None, f"holds .npz files that are not shards ({foreign[0].name})")
        for old in existing:
            os.unlink(old)
    out.mkdir(parents=True, exist_ok=True)
    model = _build_model(params, int(seed), split)
    paths = []
    for number, (lo, hi) in enumerate(bounds):
        path = out / SHARD_PATTERN.format(number)
        save_trace(_generate(params, model, lo, hi - lo), path)
        paths.append(path)
    return paths


def write_trace(params: SynthParams, tokens: int, out: str | Path, seed: int = 0, split: str = "train",
                shard_tokens: int | None = None, overwrite: bool = False) -> list[Path]:
    """``out`` ending in ``.npz`` without ``shard_tokens``: one file; otherwise a shard directory."""
    out = Path(out)
    if shard_tokens is None and out.suffix == ".npz":
        if out.exists() and not overwrite:
            raise InputError(out, None, "already exists; overwrite to replace it")
        save_trace(generate(params, tokens, seed, split), out)
        return [out]
    return write_shards(params, tokens, out, shard_tokens or 1 << 20, seed, split, overwrite)


def describe(params: SynthParams) -> dict:
    """The parameters as a plain dict (for ``placer synth --show``)."""
    return asdict(params)
