"""The ``placer`` command line: a thin layer over the Python API.

Bad input exits with code 2 and one line naming the file and field; success exits 0.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from placer import instances
from placer.atomic import atomic_output, refuse_overwriting_input, write_text_atomic
from placer.bundled import sample_trace
from placer.errors import InfeasibleError, InputError
from placer.evaluation import calc
from placer.evaluation.replay import ReplayReport, evaluate
from placer.evaluation.timeline import POLICIES, replay_timeline
from placer.formats import placement_io
from placer.formats.engines import write_output
from placer.formats.esft import ESFT_TASKS, import_esft
from placer.formats.importers import (
    ExpertCounts,
    load_routing,
    read_megatron,
    read_sglang_dump,
    read_trtllm,
    read_vllm,
    save_counts,
)
from placer.migration import minimize_moves, moved_weights
from placer.online import RebalanceConfig
from placer.parallel import is_ctrl_c
from placer.placement import BASELINES, Placement, baseline
from placer.presentation.render import (
    comparison_table,
    key_value_table,
    stats_table,
    sweep_notes,
    sweep_table,
    timeline_tables,
)
from placer.progress import ProgressFn, prefixed, terminal_progress
from placer.solvers import place
from placer.solvers.api import SolveReport, summary_cap
from placer.solvers.eplb_policy import eplb_placement
from placer.stats import summary_stats, trace_stats
from placer.studies import sweep, synth
from placer.studies.cluster import Cluster, connect
from placer.topology import Model, Topology, memory_slots
from placer.trace import Trace, TraceSource, save_trace, trace_digest

app = typer.Typer(
    help="Topology-aware expert placement for Mixture-of-Experts models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
import_app = typer.Typer(help="Convert routing traces from other tools into placer's .npz format.")
app.add_typer(import_app, name="import")
console = Console(width=None if sys.stdout.isatty() else 200)


class Source(str, Enum):
    token = "token"
    sequence = "sequence"


class Dispatch(str, Enum):
    normal = "normal"
    low_latency = "low-latency"


JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars (shown only when stderr is a terminal).")]
TopologyOpt = Annotated[str, typer.Option(help="Topology preset name or .toml file.")]
NodesOpt = Annotated[int | None, typer.Option("--nodes", help="Override the topology's node count.")]
GpnOpt = Annotated[int | None, typer.Option("--gpus-per-node", help="Override the GPUs per node.")]
ModelOpt = Annotated[
    str | None, typer.Option(help="Model preset name or .toml file (default: the preset matching the trace).")
]
MaxNodesOpt = Annotated[int | None, typer.Option("--max-nodes", help="Report tokens touching more than M nodes.")]
SourceOpt = Annotated[Source, typer.Option(help="token: token t on GPU t mod P (or src_rank); sequence: sequence i on GPU i mod P.")]
class Rule(str, Enum):
    nearest = "nearest"
    sglang_static = "sglang-static"


RuleOpt = Annotated[Rule, typer.Option(help="Which replica serves a token when experts are replicated.")]
DispatchOpt = Annotated[Dispatch, typer.Option(help="normal: one copy per remote node; low-latency: one per remote expert.")]
SchedulerOpt = Annotated[str | None, typer.Option(
    help="Dask scheduler address (tcp://host:8786) or local:N: summarise shards and solve layers on "
         "its workers, which open the trace files themselves (result unchanged; needs placer[dask]).")]


def _open_routing(path: str) -> TraceSource | Trace | ExpertCounts:
    """Native .npz traces stream from disk; every other format is read whole (see load_routing)."""
    given = Path(path)
    if given.suffix == ".npz" or (given.is_dir() and any(given.glob("*.npz"))):
        return TraceSource(given)
    return load_routing(given)


def _open_trace(path: str) -> TraceSource | Trace:
    """A routing input that must hold tokens (replay and statistics need who is routed together)."""
    routing = _open_routing(path)
    if isinstance(routing, ExpertCounts):
        raise InputError(path, "trace", "holds expert counts only; this command needs token-level routing")
    return routing


@contextmanager
def _cluster(scheduler: str, source: TraceSource | Trace | ExpertCounts) -> Iterator[Cluster]:
    """The Dask cluster ``scheduler`` (see placer.studies.cluster); the trace must be native .npz files."""
    if not isinstance(source, TraceSource):
        raise InputError(None, "--scheduler", "needs a native .npz trace or shard directory (convert with placer import)")
    with connect(scheduler) as cluster:
        yield cluster


def _print_json(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def _topology(name: str, nodes: int | None, gpus_per_node: int | None) -> Topology:
    topology = instances.load_topology(name)
    for option, value in (("--nodes", nodes), ("--gpus-per-node", gpus_per_node)):
        if value is not None and value <= 0:
            raise InputError(None, option, f"expected a positive count, got {value}")
    return topology.resized(nodes, gpus_per_node)


def _model(name: str | None, num_experts: int, top_k: int | None) -> Model | None:
    """The named model, else the unique preset with this expert count and top-k, else None."""
    if name is None:
        return None if top_k is None else instances.match_model(num_experts, top_k)
    model = instances.load_model(name)
    if model.num_experts < num_experts or top_k not in (None, model.top_k):
        raise InputError(
            name, "model",
            f"{model.num_experts} experts, top-{model.top_k} does not fit a trace with "
            f"{num_experts} experts, top-{top_k}",
        )
    return model


def _placement(spec: str, trace: TraceSource, topology: Topology, model: Model | None) -> tuple[str, Placement]:
    """A baseline by name or a placement file, with the label to show it under."""
    if spec in BASELINES:
        experts = model.num_experts if model is not None else trace.num_experts
        return spec, baseline(spec, trace.num_layers, experts, topology.num_gpus, topology.gpus_per_node)
    return Path(spec).name, placement_io.read_placement(spec, topology.num_gpus, topology.gpus_per_node, model)


def _report_results(results: list[tuple[str, ReplayReport]], title: str, as_json: bool) -> None:
    if as_json:
        if len(results) == 1:
            _print_json(results[0][1].to_dict())
        else:
            _print_json({"results": {name: report.to_dict() for name, report in results}})
        return
    console.print(comparison_table(results, title))


def _title(trace_path: str, trace: TraceSource, topology: Topology, model: Model | None, extra: str = "") -> str:
    model_name = model.name if model is not None else "none (token counts only; pass --model for bytes and time)"
    return (
        f"{trace_path}: {trace.num_tokens:,} tokens x {trace.num_layers} layers, top-{trace.top_k} | "
        f"{topology.name}: {topology.nodes} nodes x {topology.gpus_per_node} GPUs | model: {model_name}{extra}"
    )


@app.command("stats")
def stats_command(
    trace: Annotated[str, typer.Argument(help="Trace .npz file or directory of shards.")],
    scheduler: SchedulerOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Trace statistics per layer and averaged: load skew, entropy, distinct sets, density."""
    source = _open_trace(trace)
    with terminal_progress(quiet) as progress:
        if scheduler is None:
            stats = trace_stats(source, progress=progress)
        else:
            with _cluster(scheduler, source) as cluster:
                stats = summary_stats(cluster.summarize(source))
    if as_json:
        _print_json(stats.to_dict())
        return
    doc = stats.to_dict()
    console.print(
        f"{trace}: {doc['tokens']:,} tokens x {doc['layers']} MoE layers, top-{doc['k']} of {doc['experts']} experts",
        markup=False, highlight=False,
    )
    console.print(stats_table(doc))


@app.command("evaluate")
def evaluate_command(
    trace: Annotated[str, typer.Option(help="Trace .npz file or directory of shards to replay.")],
    placement: Annotated[
        list[str], typer.Option(help="contiguous, round-robin, random or a placement file; repeat to compare.")
    ],
    topology: TopologyOpt = "h100-dgx",
    nodes: NodesOpt = None,
    gpus_per_node: GpnOpt = None,
    model: ModelOpt = None,
    max_nodes: MaxNodesOpt = None,
    source: SourceOpt = Source.token,
    dispatch: DispatchOpt = Dispatch.normal,
    rule: RuleOpt = Rule.nearest,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Replay a trace against placements: traffic per link tier, NIC and GPU load, a2a time."""
    source_trace = _open_trace(trace)
    topo = _topology(topology, nodes, gpus_per_node)
    mdl = _model(model, source_trace.num_experts, source_trace.top_k)
    results = []
    with terminal_progress(quiet) as progress:
        for spec in placement:
            label, chosen = _placement(spec, source_trace, topo, mdl)
            report = evaluate(source_trace, chosen, topo, mdl, source=source.value, dispatch=dispatch.value,
                              max_nodes=max_nodes, rule=rule.value, progress=prefixed(progress, f"{label}: "))
            results.append((label, report))
    _report_results(results, _title(trace, source_trace, topo, mdl), as_json)


class SolverChoice(str, Enum):
    auto = "auto"
    spectral = "spectral"
    ilp = "ilp"
    eplb = "eplb"
    contiguous = "contiguous"
    round_robin = "round-robin"
    random = "random"


class OutputFormat(str, Enum):
    placer = "placer"
    sglang = "sglang"
    trtllm = "trtllm"
    eplb = "eplb"
    permutation = "permutation"


@app.command("place")
def place_command(
    trace: Annotated[str, typer.Option(help="Trace .npz file or directory of shards to place from.")],
    out: Annotated[str, typer.Option(help="Output placement file (JSON).")],
    solver: Annotated[SolverChoice, typer.Option(help="Placement algorithm or baseline.")] = SolverChoice.auto,
    topology: TopologyOpt = "h100-dgx",
    nodes: NodesOpt = None,
    gpus_per_node: GpnOpt = None,
    model: ModelOpt = None,
    balance: Annotated[float | None, typer.Option(help="Max GPU load <= (1+EPS) x mean on the trace.")] = None,
    max_nodes: Annotated[int | None, typer.Option("--max-nodes", help="A token may touch at most M nodes.")] = None,
    max_nodes_coverage: Annotated[
        float | None, typer.Option(help="With --max-nodes: the limit must hold for at least this share of tokens.")
    ] = None,
    keep_groups: Annotated[bool, typer.Option(help="Keep each expert group of the model on its own nodes.")] = False,
    slots_per_gpu: Annotated[
        str | None,
        typer.Option(help="Expert slots per GPU and layer: a number, or 'memory' for as many as fit (default: ceil(E / GPUs))."),
    ] = None,
    memory_reserve: Annotated[
        float, typer.Option(help="Share of GPU memory kept for non-expert use when checking that experts fit.")
    ] = 0.0,
    time_limit: Annotated[float, typer.Option(help="Solver budget in seconds (deterministic effort).")] = 60.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    workers: Annotated[int, typer.Option(help="Processes solving layers in parallel (result unchanged).")] = 1,
    output_format: Annotated[
        OutputFormat,
        typer.Option("--format", help="placer JSON, SGLang JSON, TensorRT-LLM YAML, EPLB .npz or expert permutation JSON."),
    ] = OutputFormat.placer,
    heldout: Annotated[str | None, typer.Option("--evaluate", help="Held-out trace to replay against the result and the baselines.")] = None,
    exclude_gpus: Annotated[
        str | None, typer.Option(help="Comma-separated GPU ids out of service (e.g. failed): they get no experts.")
    ] = None,
    current: Annotated[
        str | None, typer.Option(help="Placement in service now: relabel nodes/GPUs of the result to move the fewest experts.")
    ] = None,
    max_nets: Annotated[
        str, typer.Option(help="Distinct top-k sets kept per layer while streaming the trace: a number, "
                          "'all', or 'auto' (as many as the solver's search uses; bounds memory).")
    ] = "auto",
    scheduler: SchedulerOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Place every layer's experts on GPUs and nodes from a trace, and write the placement.

    Ctrl-C while layers are being solved writes the best placement so far (solved layers plus
    the spectral start of the others, marked interrupted) and exits with code 130.
    """
    refuse_overwriting_input(out, trace, *( [heldout] if heldout else []))
    started = time.perf_counter()
    source = _open_routing(trace)
    counts_only = isinstance(source, ExpertCounts)
    if counts_only and solver.value not in (*BASELINES, "eplb"):
        raise InputError(trace, "trace", "expert counts carry no co-activation; use --solver eplb or a routing trace")
    topo = _topology(topology, nodes, gpus_per_node)
    mdl = _model(model, source.num_experts, None if counts_only else source.top_k)
    experts = mdl.num_experts if mdl is not None else source.num_experts
    slots = _slots(slots_per_gpu, memory_reserve, experts, topo, mdl)
    dead = _gpu_list(exclude_gpus)
    digest = None
    if solver.value in BASELINES:
        chosen = baseline(solver.value, source.num_layers, experts, topo.num_gpus, topo.gpus_per_node, dead)
        solve_facts: dict = {"solver": solver.value}
    elif counts_only:
        chosen = eplb_placement(source.counts, topo, mdl, slots, dead)
        solve_facts = {"solver": "eplb"}
    else:
        with terminal_progress(quiet) as progress:
            chosen, report, digest = _solve(
                scheduler, source, topo, solver=solver.value, balance=balance, max_nodes=max_nodes,
                max_nodes_coverage=max_nodes_coverage, keep_groups=keep_groups, model=mdl,
                time_limit=time_limit, seed=seed, workers=workers, slots_per_gpu=slots, exclude_gpus=dead,
                max_nets=_max_nets(max_nets), progress=progress, on_interrupt="best",
            )
        solve_facts = report.to_dict()
    metadata = {
        **chosen.metadata,
        "topology": topo.to_dict(),
        "model": None if mdl is None else mdl.to_dict(),
        "trace": {"sha256": digest or trace_digest(source), "layers": source.num_layers,
                  "tokens": None if counts_only else source.num_tokens},
    }
    chosen = replace(chosen, metadata=metadata)
    if current:
        in_service = placement_io.read_placement(current, topo.num_gpus, topo.gpus_per_node, mdl)
        naive = moved_weights(in_service, chosen, mdl.expert_param_bytes if mdl else 0.0)
        chosen = minimize_moves(in_service, chosen)
        solve_facts["moves"] = {
            "without_relabel": naive["experts_moved"],
            **moved_weights(in_service, chosen, mdl.expert_param_bytes if mdl else 0.0),
        }
    write_output(chosen, out, output_format.value, mdl)
    wall = time.perf_counter() - started
    interrupted = solve_facts.get("interrupted")
    test = _open_trace(heldout) if heldout and not interrupted else None
    with terminal_progress(quiet) as progress:
        results = _against_baselines(test, f"placer {solver.value}", chosen, topo, mdl, max_nodes,
                                     progress) if test else []
    if as_json:
        _print_json({"out": out, "wall_s": wall, "interrupted": bool(interrupted), "solve": solve_facts,
                     "evaluation": {name: r.totals for name, r in results}})
        _exit_if_interrupted(out, output_format.value, solve_facts)
        return
    console.print(f"wrote {out} ({output_format.value} format) in {wall:.1f} s wall", markup=False, highlight=False)
    if solve_facts.get("layers"):
        optimal = sum(layer["status"] == "optimal" for layer in solve_facts["layers"])
        console.print(
            f"{solver.value}: train objective {solve_facts['objective']:,.0f} token-node copies, "
            f"bound {solve_facts['bound']:,.0f}, gap {solve_facts['gap']:.1%} "
            f"({optimal}/{len(solve_facts['layers'])} layers proven optimal)",
            markup=False, highlight=False,
        )
        for message in solve_facts["messages"]:
            console.print(f"note: {message}", markup=False, highlight=False)
        if solve_facts.get("interrupted"):
            console.print(f"INTERRUPTED: {solve_facts['interrupted']['note']}", markup=False, highlight=False)
    if "moves" in solve_facts:
        moves = solve_facts["moves"]
        console.print(
            f"from {current}: {moves['experts_moved']:,} expert copies to load "
            f"({moves['bytes_moved'] / 1e9:,.2f} GB of weights), {moves['without_relabel']:,} without relabelling",
            markup=False, highlight=False,
        )
    if test is not None:
        console.print(comparison_table(results, _title(heldout, test, topo, mdl, " | held-out replay")))
    _exit_if_interrupted(out, output_format.value, solve_facts)


def _exit_if_interrupted(out: str, output_format: str, solve_facts: dict) -> None:
    """After Ctrl-C cut the solve short: say what was written, on one stderr line, and exit 130."""
    interrupted = solve_facts.get("interrupted")
    if not interrupted:
        return
    marked = ("marked interrupted in its solver metadata" if output_format == "placer"
              else f"the {output_format} format cannot record that")
    Console(stderr=True).print(
        f"placer: interrupted: wrote the best placement so far to {out} ({interrupted['note']}; "
        f"gap {solve_facts['gap']:.1%}; {marked})", markup=False, highlight=False, soft_wrap=True,
    )
    raise typer.Exit(130)


def _solve(scheduler: str | None, source: TraceSource | Trace, topology: Topology, **options: object
           ) -> tuple[Placement, SolveReport, str]:
    """place() and the trace digest, in-process or on the Dask cluster ``scheduler`` (the shard
    summaries, the per-layer solves and the digest run on its workers; same result)."""
    if scheduler is None:
        return *place(source, topology, **options), trace_digest(source)
    cap = summary_cap(options.pop("max_nets"), options["solver"], options["time_limit"], source.num_layers,
                      options["max_nodes"])
    with _cluster(scheduler, source) as cluster:
        digest = cluster.submit(trace_digest, source)
        chosen, report = place(cluster.summarize(source, max_nets=cap), topology, mapper=cluster.map, **options)
        return chosen, report, digest.result()


def _gpu_list(text: str | None) -> list[int]:
    """GPU ids from "3,7,12" (range checks happen where the topology is known)."""
    if not text:
        return []
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(None, "--exclude-gpus", f"expected comma-separated GPU ids, got {text!r}") from None


def _max_nets(requested: str) -> int | None | str:
    """--max-nets: 'auto', 'all' (None: every set) or a non-negative count."""
    if requested in ("auto", "all"):
        return None if requested == "all" else requested
    if not requested.isdigit():
        raise InputError(None, "--max-nets", f"expected a count, 'all' or 'auto', got {requested!r}")
    return int(requested)


def _slots(requested: str | None, reserve: float, experts: int, topo: Topology, mdl: Model | None) -> int | None:
    """Slots per GPU from --slots-per-gpu, checked against what fits in GPU memory."""
    if not 0.0 <= reserve < 1.0:
        raise InputError(None, "--memory-reserve", f"expected a share in [0, 1), got {reserve}")
    fits = memory_slots(topo, mdl, reserve) if mdl is not None else None
    needed = math.ceil(experts / topo.num_gpus)
    if requested == "memory":
        if fits is None:
            raise InputError(None, "--slots-per-gpu", "'memory' needs a model with expert_param_bytes (--model)")
        slots = fits
    elif requested is None:
        slots = None
    elif requested.isdigit() and int(requested) > 0:
        slots = int(requested)
    else:
        raise InputError(None, "--slots-per-gpu", f"expected a positive integer or 'memory', got {requested!r}")
    wanted = slots or needed
    if wanted < needed:
        raise InputError(None, "--slots-per-gpu", f"{wanted} slots x {topo.num_gpus} GPUs cannot hold {experts} experts")
    if fits is not None and wanted > fits:
        per_layer = mdl.expert_param_bytes * mdl.num_moe_layers
        raise InputError(
            f"model {mdl.name}", "--slots-per-gpu",
            f"{wanted} experts per GPU and layer need {wanted * per_layer / 1e9:.1f} GB, but "
            f"{topo.gpu_memory_bytes * (1 - reserve) / 1e9:.1f} GB of GPU memory is free for experts "
            f"({fits} fit); use more GPUs, a smaller --memory-reserve or fewer slots",
        )
    return slots


def _against_baselines(
    test: TraceSource, label: str, chosen: Placement, topo: Topology, mdl: Model | None, max_nodes: int | None,
    progress: ProgressFn | None = None,
) -> list[tuple[str, ReplayReport]]:
    """Replay ``test`` against the three baselines and ``chosen`` (last)."""
    placements = [
        (name, baseline(name, test.num_layers, chosen.num_experts, topo.num_gpus, topo.gpus_per_node,
                        chosen.excluded_gpus))
        for name in BASELINES
    ]
    return [(name, evaluate(test, p, topo, mdl, max_nodes=max_nodes, progress=prefixed(progress, f"{name}: ")))
            for name, p in [*placements, (label, chosen)]]


class ReportFormat(str, Enum):
    html = "html"
    md = "md"


@app.command("report")
def report_command(
    trace: Annotated[str, typer.Option(help="Trace .npz file or directory of shards to replay.")],
    placement: Annotated[list[str], typer.Option(help="contiguous, round-robin, random or a placement file; repeat.")],
    out: Annotated[str, typer.Option(help="Output folder: index.html (or report.md) and the PNGs.")],
    output_format: Annotated[ReportFormat, typer.Option("--format", help="html (one self-contained file) or md.")] = ReportFormat.html,
    topology: TopologyOpt = "h100-dgx",
    nodes: NodesOpt = None,
    gpus_per_node: GpnOpt = None,
    model: ModelOpt = None,
    max_nodes: MaxNodesOpt = None,
    source: SourceOpt = Source.token,
    dispatch: DispatchOpt = Dispatch.normal,
    rule: RuleOpt = Rule.nearest,
    layer: Annotated[int | None, typer.Option(help="MoE layer of the co-activation heatmap (default: middle).")] = None,
    no_baselines: Annotated[bool, typer.Option("--no-baselines", help="Do not add the three baselines.")] = False,
    title: Annotated[str | None, typer.Option(help="Report title.")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Replay placements and write an HTML or Markdown report with figures (needs the `plots` extra)."""
    try:
        from placer.presentation.report import FIGURE_NAMES, write_report
    except ImportError as err:
        raise InputError(None, "report", f"{err}; install the plots extra: pip install 'placer[plots]'") from None
    source_trace = _open_trace(trace)
    topo = _topology(topology, nodes, gpus_per_node)
    mdl = _model(model, source_trace.num_experts, source_trace.top_k)
    chosen = [_placement(spec, source_trace, topo, mdl) for spec in placement]
    labels = [label for label, _ in chosen]
    placements = {
        (spec if labels.count(label) > 1 else label): p for spec, (label, p) in zip(placement, chosen)
    }
    with terminal_progress(quiet) as progress:
        page = write_report(
            source_trace, placements, topo, mdl, out, title=title, format=output_format.value,
            baselines=() if no_baselines else BASELINES, layer=layer, source=source.value, dispatch=dispatch.value,
            max_nodes=max_nodes, rule=rule.value, trace_label=trace, inputs=[s for s in placement if s not in BASELINES],
            progress=progress,
        )
    figures = [str(page.parent / f"{name}.png") for name in FIGURE_NAMES]
    if as_json:
        _print_json({"out": str(page), "figures": figures})
    else:
        console.print(f"wrote {page} and {len(figures)} figures", markup=False, highlight=False)


@app.command("validate")
def validate_command(
    placement: Annotated[str, typer.Argument(help="Placement file (placer JSON or SGLang JSON).")],
    topology: TopologyOpt = "h100-dgx",
    nodes: NodesOpt = None,
    gpus_per_node: GpnOpt = None,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check a placement: schema, every expert in every layer, slots, memory, EP divisibility."""
    topo = _topology(topology, nodes, gpus_per_node)
    mdl = instances.load_model(model) if model else None
    chosen = placement_io.read_placement(placement, topo.num_gpus, topo.gpus_per_node, mdl)
    facts = placement_io.check_against(placement, chosen, topo, mdl)
    if as_json:
        _print_json({"valid": True, **facts})
    else:
        console.print(key_value_table({"valid": True, **facts}, f"{placement}: valid"))


@app.command("schema")
def schema_command(
    as_json: Annotated[bool, typer.Option("--json", help="Accepted for uniformity: the schema is always JSON.")] = False,
) -> None:
    """Print the JSON Schema of placer's placement file."""
    _print_json(placement_io.placement_schema())


@app.command("calc")
def calc_command(
    model: Annotated[str, typer.Option(help="Model preset name or .toml file.")] = "deepseek-v3",
    ep: Annotated[int, typer.Option(help="Expert-parallel size (GPUs).")] = 256,
    tokens_per_gpu: Annotated[int, typer.Option(help="Tokens per GPU per micro-batch.")] = 4096,
    gpus_per_node: Annotated[int, typer.Option("--gpus-per-node", help="GPUs per node.")] = 8,
    max_nodes: MaxNodesOpt = None,
    dispatch_bytes: Annotated[float | None, typer.Option(help="Override bytes per element for dispatch.")] = None,
    combine_bytes: Annotated[float | None, typer.Option(help="Override bytes per element for combine.")] = None,
    topology: Annotated[str | None, typer.Option(help="Topology for time estimates.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """All-to-all volume under uniform routing, without a trace (per GPU, per layer, one way)."""
    mdl = instances.load_model(model)
    if dispatch_bytes is not None:
        mdl = replace(mdl, dispatch_bytes_per_element=dispatch_bytes)
    if combine_bytes is not None:
        mdl = replace(mdl, combine_bytes_per_element=combine_bytes)
    topo = instances.load_topology(topology) if topology else None
    volume = calc.all_to_all_volume(mdl, ep, tokens_per_gpu, gpus_per_node, max_nodes, topo)
    if as_json:
        _print_json(volume.to_dict())
    else:
        console.print(key_value_table(volume.to_dict(), f"{mdl.name} at EP {ep}, {tokens_per_gpu:,} tokens per GPU"))


def _ep_list(text: str) -> list[int]:
    """EP sizes from "1,2,4" (checked against the model and topology by the sweep)."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(None, "--ep", f"expected comma-separated EP sizes, got {text!r}") from None


@app.command("sweep")
def sweep_command(
    model: Annotated[str, typer.Option(help="Model preset name or .toml file.")],
    topology: Annotated[str, typer.Option(help="Topology preset or .toml file: the whole cluster.")],
    trace: Annotated[str | None, typer.Option(help="Routing trace to solve placer's placement on (default: uniform routing).")] = None,
    eval_trace: Annotated[str | None, typer.Option(help="Trace to replay (ideally held out; default: --trace).")] = None,
    ep: Annotated[str, typer.Option(help="Comma-separated EP sizes.")] = ",".join(map(str, sweep.DEFAULT_EPS)),
    tokens_per_step: Annotated[int, typer.Option(help="Tokens per training step, whole cluster.")] = sweep.DEFAULT_TOKENS_PER_STEP,
    dispatch: DispatchOpt = Dispatch.normal,
    peer_latency: Annotated[float, typer.Option(help="Seconds per inter-node peer per all-to-all phase (0: bandwidth + fixed latency).")] = 0.0,
    solver: Annotated[str, typer.Option(help="placer's solver: spectral, auto, ilp, eplb.")] = "spectral",
    seed: Annotated[int, typer.Option(help="Solver seed.")] = 0,
    alpha: Annotated[float | None, typer.Option(help="placer's NIC-balance weight (default: the solver's per node count).")] = None,
    out: Annotated[str | None, typer.Option(help="Directory for sweep.json and sweep.png.")] = None,
    scheduler: Annotated[str | None, typer.Option(
        help="Dask scheduler address or local:N: solve and replay each EP size as a task on its workers "
             "(result unchanged; needs placer[dask]).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Inter- and intra-node GB per training step and a2a/compute time as EP grows: contiguous vs placer."""
    mdl, topo = instances.load_model(model), instances.load_topology(topology)
    inputs = [p for p in (trace, eval_trace) if p is not None]
    targets = [] if out is None else [Path(out), Path(out) / "sweep.json", Path(out) / "sweep.png"]
    for target in targets:
        refuse_overwriting_input(target, *inputs)
    step = sweep.StepModel(tokens_per_step, dispatch.value, peer_latency)
    with nullcontext() if scheduler is None else connect(scheduler) as cluster:
        result = sweep.run_sweep(
            mdl, topo, None if trace is None else _open_trace(trace),
            None if eval_trace is None else _open_trace(eval_trace),
            eps=_ep_list(ep), step=step, solver=solver, seed=seed, alpha=alpha,
            mapper=map if cluster is None else cluster.map,
        )
    facts = {**result.to_dict(), "trace": trace, "eval_trace": eval_trace}
    if out is not None:
        write_text_atomic(targets[1], json.dumps(facts, indent=2) + "\n")
        _write_sweep_png(result, targets[2])
    if as_json:
        _print_json(facts)
    else:
        console.print(sweep_table(result), sweep_notes(result))
        if out is not None:
            console.print(f"wrote {targets[1]} and {targets[2]}", markup=False, highlight=False)


def _write_sweep_png(result: sweep.SweepResult, path: Path) -> None:
    """The sweep's figure, with seed 001's figures marked when the model is seed001."""
    from placer.presentation import plots

    reference = sweep.SEED001_REFERENCE if result.model.name == "seed001" else None
    fig = plots.network_cliff(result.to_dict(), reference)
    with atomic_output(path) as handle:
        plots.save_png(fig, handle)


@app.command("instances")
def instances_command(as_json: JsonOpt = False) -> None:
    """List the topology and model presets."""
    presets = instances.list_presets()
    if as_json:
        _print_json(presets)
    else:
        console.print(key_value_table({kind: ", ".join(names) for kind, names in presets.items()}, "presets"))


@import_app.command("esft")
def import_esft_command(
    directory: Annotated[str, typer.Argument(help="ESFT traces root (task folders inside) .")],
    out: Annotated[str, typer.Option(help="Output .npz (with --split: OUT-train.npz and OUT-test.npz).")],
    split: Annotated[bool, typer.Option(help="Write a train (first half of each task) and a test file.")] = False,
    task: Annotated[str | None, typer.Option(help=f"Keep one task: {', '.join(ESFT_TASKS)}.")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Import the ESFT expert-score traces (weights and sequence boundaries kept)."""
    with terminal_progress(quiet) as progress:
        result = import_esft(directory, task=task, split=split, progress=progress)
    outputs: dict[str, Trace]
    if split:
        stem = out.removesuffix(".npz")
        outputs = {f"{stem}-train.npz": result[0], f"{stem}-test.npz": result[1]}
    else:
        outputs = {out if out.endswith(".npz") else out + ".npz": result}
    for path, trace in outputs.items():
        refuse_overwriting_input(path, directory)
        save_trace(trace, path)
    summary = {path: {"tokens": t.num_tokens, "layers": t.num_layers, "top_k": t.top_k,
                      "sequences": len(t.seq_lens)} for path, t in outputs.items()}
    if as_json:
        _print_json(summary)
    else:
        for path, facts in summary.items():
            console.print(f"wrote {path}: {facts['tokens']:,} tokens, {facts['sequences']} sequences, "
                          f"{facts['layers']} layers, top-{facts['top_k']}")


NumExpertsOpt = Annotated[
    int | None, typer.Option(help="Experts per layer, for formats that do not record it (default: largest id + 1).")
]
ImportOutOpt = Annotated[str, typer.Option(help="Output: .npz for a routing trace, .npy for expert counts.")]


def _write_imported(result: Trace | ExpertCounts, out: str, inputs: list[str], as_json: bool) -> None:
    """Save an import (trace -> .npz, counts -> .npy) and say what was written."""
    for given in inputs:
        refuse_overwriting_input(out, given)
    wanted = ".npy" if isinstance(result, ExpertCounts) else ".npz"
    if Path(out).suffix != wanted:
        kind = "expert counts" if wanted == ".npy" else "a routing trace"
        raise InputError(out, "--out", f"this input holds {kind}; write a {wanted} file")
    if isinstance(result, ExpertCounts):
        save_counts(result, out)
        facts = {"out": out, "kind": "counts", "layers": result.num_layers, "experts": result.num_experts}
    else:
        save_trace(result, out)
        facts = {"out": out, "kind": "trace", "tokens": result.num_tokens, "layers": result.num_layers,
                 "top_k": result.top_k, "experts": result.num_experts}
    if as_json:
        _print_json(facts)
    else:
        details = ", ".join(f"{key} {value:,}" for key, value in facts.items() if isinstance(value, int))
        console.print(f"wrote {out}: {facts['kind']}, {details}", markup=False, highlight=False)


@import_app.command("megatron")
def import_megatron_command(
    source: Annotated[str, typer.Argument(help="Directory of router_trace_rank<R>.jsonl files, or one file.")],
    out: ImportOutOpt,
    num_experts: NumExpertsOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Import Megatron-Core --moe-routing-trace-path output."""
    with terminal_progress(quiet) as progress:
        trace = read_megatron(source, num_experts, progress)
    _write_imported(trace, out, [source], as_json)


@import_app.command("vllm")
def import_vllm_command(
    files: Annotated[list[str], typer.Argument(help="routed_experts .npy files [tokens, moe_layers, top_k], one per request.")],
    out: ImportOutOpt,
    num_experts: NumExpertsOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Import vLLM routed_experts arrays."""
    with terminal_progress(quiet) as progress:
        trace = read_vllm(files, num_experts, progress)
    _write_imported(trace, out, files, as_json)


@import_app.command("sglang")
def import_sglang_command(
    dump: Annotated[str, typer.Argument(help="SGLang expert-distribution dump (torch.save file; stat or per_token mode).")],
    out: ImportOutOpt,
    num_experts: NumExpertsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Import an SGLang expert-distribution dump (needs the `sglang` extra: torch)."""
    _write_imported(read_sglang_dump(dump, num_experts), out, [dump], as_json)


@import_app.command("trtllm")
def import_trtllm_command(
    directory: Annotated[str, typer.Argument(help="TensorRT-LLM expert statistics directory (meta_info.json).")],
    out: ImportOutOpt,
    as_json: JsonOpt = False,
) -> None:
    """Import TensorRT-LLM expert statistics (needs the `trtllm` extra: safetensors)."""
    _write_imported(read_trtllm(directory), out, [directory], as_json)


class Policy(str, Enum):
    static = "static"
    eplb = "eplb"
    placer = "placer"
    naive = "naive"
    oracle = "oracle"


def _stream(path: str, quiet: bool) -> Trace:
    """A time-ordered trace in memory: a native .npz trace, or an ESFT root directory (its four
    tasks concatenated in order, sequences in order)."""
    given = Path(path)
    if given.is_dir() and any((given / task).is_dir() for task in ESFT_TASKS):
        with terminal_progress(quiet) as progress:
            return import_esft(given, progress=progress)
    source = _open_trace(path)
    return source.load() if isinstance(source, TraceSource) else source


@app.command("replay")
def replay_command(
    trace: Annotated[str, typer.Option(help="Time-ordered trace (.npz or shards) or an ESFT root directory.")],
    window: Annotated[int, typer.Option(help="Tokens per window: each window is served by the placement "
                                             "decided from the windows before it.")] = 4000,
    slots_per_gpu: Annotated[int, typer.Option("--slots-per-gpu", help="Expert slots per GPU (spare slots "
                                                                       "hold replicas).")] = 2,
    policy: Annotated[list[Policy] | None, typer.Option(help="Policies to compare (repeat; default all).")] = None,
    topology: TopologyOpt = "h100-dgx",
    nodes: NodesOpt = None,
    gpus_per_node: GpnOpt = None,
    model: ModelOpt = None,
    dispatch: DispatchOpt = Dispatch.normal,
    rule: RuleOpt = Rule.nearest,
    solver: Annotated[SolverChoice, typer.Option(help="Solver of the fresh solves (static, naive, oracle).")]
    = SolverChoice.spectral,
    time_limit: Annotated[float, typer.Option(help="Seconds per fresh solve.")] = 60.0,
    seed: Annotated[int, typer.Option(help="Seed of the solves and the rebalancer.")] = 0,
    half_life: Annotated[float | None, typer.Option(help="Rebalancer window half-life in tokens.")] = None,
    move_budget: Annotated[float | None, typer.Option(help="Rebalancer: share of slots movable per "
                                                           "rebalance.")] = None,
    min_gain: Annotated[float | None, typer.Option(help="Rebalancer: least predicted gain worth moving "
                                                        "a layer.")] = None,
    plot: Annotated[str | None, typer.Option(help="Write the timeline figure to this PNG (needs "
                                                  "placer[plots]).")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Timeline replay: policies side by side over a time-ordered trace cut into windows."""
    if solver.value not in ("auto", "spectral", "ilp"):
        raise InputError(None, "--solver", f"expected auto, spectral or ilp, got {solver.value}")
    overrides = {name: value for name, value in (("half_life_tokens", half_life), ("move_budget", move_budget),
                                                 ("min_gain", min_gain)) if value is not None}
    flags = {"half_life_tokens": "--half-life", "move_budget": "--move-budget", "min_gain": "--min-gain"}
    try:
        config = replace(RebalanceConfig(), **overrides)
    except InputError as err:
        raise InputError(None, flags.get(err.field or "", err.field), err.message) from None
    stream = _stream(trace, quiet)
    topo = _topology(topology, nodes, gpus_per_node)
    mdl = _model(model, stream.num_experts, stream.top_k)
    policies = [p.value for p in policy] if policy else list(POLICIES)
    with terminal_progress(quiet) as progress:
        result = replay_timeline(stream, topo, mdl, window_tokens=window, slots_per_gpu=slots_per_gpu,
                                 policies=policies, config=config, rule=rule.value, dispatch=dispatch.value,
                                 solver=solver.value, time_limit=time_limit, seed=seed, progress=progress)
    if plot is not None:
        from placer.presentation import plots

        with atomic_output(plot) as target:
            plots.save_png(plots.timeline(result, title=f"{Path(trace).name}: policies over time"), target)
    if as_json:
        _print_json(result.to_dict())
        return
    console.print(_title(trace, stream, topo, mdl, f" | {slots_per_gpu} slots/GPU, rule {rule.value}"),
                  markup=False, highlight=False)
    for table in timeline_tables(result):
        console.print(table)


class Split(str, Enum):
    train = "train"
    test = "test"


@app.command("synth")
def synth_command(
    preset: Annotated[str, typer.Option(help="esft, deepseek-v3, kimi-k2, qwen3-235b, seed001, or a .toml with [synth].")],
    tokens: Annotated[int, typer.Option(help="Tokens to generate.")],
    out: Annotated[str, typer.Option(help=".npz file, or a directory of shards (with --shard-tokens).")],
    split: Annotated[Split, typer.Option(help="train, or test (applies the preset's domain drift).")] = Split.train,
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 0,
    shard_tokens: Annotated[int | None, typer.Option(help="Write shards of about T tokens (cut at sequence starts).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing shards in OUT.")] = False,
    phases: Annotated[int, typer.Option(help="A drifting stream: P phases in order, phase p drawn from the "
                                             "test split with drift p x --drift-step (one .npz).")] = 1,
    drift_step: Annotated[float, typer.Option(help="Drift added per phase (with --phases).")] = 1.0,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Generate a synthetic routing trace calibrated to real traces (see placer/studies/synth.py)."""
    if tokens <= 0:
        raise InputError(None, "--tokens", f"expected a positive count, got {tokens}")
    if phases < 1:
        raise InputError(None, "--phases", f"expected >= 1, got {phases}")
    params = synth.load_params(preset)
    started = time.perf_counter()
    if phases > 1:
        if Path(out).suffix != ".npz" or shard_tokens is not None:
            raise InputError(None, "--phases", "writes one .npz file (no --shard-tokens)")
        if Path(out).exists() and not overwrite:
            raise InputError(out, None, "already exists; choose another name or overwrite")
        save_trace(synth.phased(params, tokens, phases, seed, drift_step), out)
        paths = [Path(out)]
    else:
        with terminal_progress(quiet) as progress:
            paths = synth.write_trace(params, tokens, out, seed=seed, split=split.value,
                                      shard_tokens=shard_tokens, overwrite=overwrite, progress=progress)
    seconds = time.perf_counter() - started
    if as_json:
        _print_json({"preset": preset, "params": synth.describe(params), "tokens": tokens, "split": split.value,
                     "seed": seed, "files": [str(p) for p in paths], "seconds": seconds})
    else:
        what = f"{phases}-phase" if phases > 1 else split.value
        console.print(f"wrote {tokens:,} {what} tokens of {preset} to {out} ({len(paths)} file(s)) "
                      f"in {seconds:.1f} s", markup=False, highlight=False)


@app.command("demo")
def demo_command(as_json: JsonOpt = False, quiet: QuietOpt = False) -> None:
    """Place the embedded ESFT sample's first half (spectral), replay its held-out half vs the baselines."""
    train, test = TraceSource(sample_trace("train")), TraceSource(sample_trace("test"))
    topo = instances.load_topology("h100-dgx").resized(4, 8)
    mdl = instances.load_model("deepseek-v2-lite")
    started = time.perf_counter()
    with terminal_progress(quiet) as progress:
        chosen, report = place(train, topo, solver="spectral", model=mdl, progress=progress)
        wall = time.perf_counter() - started
        results = _against_baselines(test, "placer spectral", chosen, topo, mdl, None, progress)
    if as_json:
        _print_json({"wall_s": wall, "solve": report.to_dict(), "evaluation": {n: r.totals for n, r in results}})
        return
    console.print(
        f"placed {train.num_tokens:,} tokens of the embedded ESFT sample (intent, first half) "
        f"with spectral in {wall:.1f} s; replaying the held-out half:",
        markup=False, highlight=False,
    )
    console.print(comparison_table(results, _title("embedded ESFT sample (intent, held-out half)", test, topo, mdl)))


def main() -> None:
    """Entry point: run the app, turning input errors into one line and exit code 2."""
    try:
        app()
    except (InputError, InfeasibleError) as err:
        Console(stderr=True).print(f"placer: error: {err}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except (KeyboardInterrupt, SystemError) as err:
        if not is_ctrl_c(err):
            raise
        _say_interrupted()
        sys.exit(130)
    except SystemExit as err:
        if err.code == 130 and _caused_by_ctrl_c(err):  # typer turns Ctrl-C into a silent exit 130
            _say_interrupted()
        raise


def _say_interrupted() -> None:
    Console(stderr=True).print("placer: interrupted; no partial output was written", markup=False, highlight=False)


def _caused_by_ctrl_c(err: BaseException) -> bool:
    """Whether a Ctrl-C is among the exceptions that led to ``err`` (its cause/context chain)."""
    seen: BaseException | None = err
    while seen is not None:
        if is_ctrl_c(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
