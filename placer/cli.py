"""The ``placer`` command line: a thin layer over the Python API.

Bad input exits with code 2 and one line naming the file and field; success exits 0.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from enum import Enum
from pathlib import Path
from types import ModuleType
from typing import Annotated

import typer
from rich.console import Console

try:  # typer 0.2x vendors click; older releases use click itself
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors

from placer import instances, workflow
from placer.atomic import (
    WrittenFiles,
    atomic_output,
    check_output,
    recording_outputs,
    refuse_overwriting_input,
    write_text_atomic,
)
from placer.bundled import sample_trace
from placer.checks import finite_json
from placer.cluster import Cluster, connect
from placer.dispatch import LP_BATCH_TOKENS, RULES
from placer.errors import InfeasibleError, InputError
from placer.evaluation import calc
from placer.evaluation.replay import DISPATCH_MODES, SOURCES, ReplayReport
from placer.evaluation.timeline import POLICIES, replay_timeline
from placer.formats import placement_io
from placer.formats.engines import OUTPUT_FORMATS, write_output
from placer.formats.esft import ESFT_TASKS, import_esft
from placer.formats.importers import (
    ExpertCounts,
    Imported,
    read_assignments,
    read_megatron,
    read_sglang,
    read_sglang_routed,
    read_trtllm,
    read_vllm,
    save_counts,
)
from placer.formats.layers import counts_layer_note, recorded_layer_ids
from placer.inputs import input_path
from placer.online import RebalanceConfig
from placer.parallel import is_ctrl_c
from placer.placement import BASELINES, Placement
from placer.presentation import REPORT_FORMATS
from placer.presentation.render import (
    calc_figures,
    comparison_table,
    key_value_table,
    stats_table,
    sweep_notes,
    sweep_table,
    timeline_tables,
    verdict,
)
from placer.progress import ProgressFn, terminal_progress
from placer.request import METHODS, PlacementProblem, SolverSettings
from placer.stats import summary_stats, trace_stats
from placer.studies import sweep, synth
from placer.studies.synth import SPLITS
from placer.topology import Model, Topology
from placer.trace import Trace, TraceSource, save_trace

app = typer.Typer(
    help="Topology-aware expert placement for Mixture-of-Experts models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # plain click help: no markup eating "[synth]", flags without "<bool>"
)
import_app = typer.Typer(
    help="Convert routing traces from other tools into placer's .npz format.", rich_markup_mode=None
)
app.add_typer(import_app, name="import")
console = Console(highlight=False)  # width: $COLUMNS, else the terminal's, else 80; tables fit any


def _choices(name: str, values: Sequence[str]) -> type[Enum]:
    """A CLI choice type built from the library's tuple of choices (one list per concept)."""
    return Enum(name, {value.replace("-", "_"): value for value in values}, type=str)


Source = _choices("Source", SOURCES)
Dispatch = _choices("Dispatch", DISPATCH_MODES)
Rule = _choices("Rule", RULES)
SolverChoice = _choices("SolverChoice", METHODS)
OutputFormat = _choices("OutputFormat", OUTPUT_FORMATS)
ReportFormat = _choices("ReportFormat", REPORT_FORMATS)
Split = _choices("Split", SPLITS)


JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bars (shown only when stderr is a terminal).")
]
TopologyOpt = Annotated[str, typer.Option(help="Topology preset name or .toml file.")]
ReplayTopologyOpt = Annotated[
    str | None,
    typer.Option(
        help="Topology preset name or .toml file (default: the cluster the placement files record; an SGLang map "
        "records none, so state it here or with --nodes and --gpus-per-node; baselines alone: h100-dgx)."
    ),
]
NodesOpt = Annotated[int | None, typer.Option("--nodes", help="Override the topology's node count.")]
GpnOpt = Annotated[int | None, typer.Option("--gpus-per-node", help="Override the GPUs per node.")]
ModelOpt = Annotated[
    str | None, typer.Option(help="Model preset name or .toml file (default: the preset matching the trace).")
]
MaxNodesOpt = Annotated[int | None, typer.Option("--max-nodes", help="Report tokens touching more than M nodes.")]
SourceOpt = Annotated[
    Source, typer.Option(help="token: token t on GPU t mod P (or src_rank); sequence: sequence i on GPU i mod P.")
]
RuleOpt = Annotated[Rule, typer.Option(help="Which replica serves a token when experts are replicated.")]
LpBatchOpt = Annotated[int, typer.Option(help="Tokens of one engine batch (forward pass): the lp rule balances "
                                                "each, sglang-dynamic counts rows within it.")]
AlphaOpt = Annotated[
    float | None,
    typer.Option(help="Weight of the busiest NIC's traffic against inter-node copies (default: the solver's; "
                 "0: fewest inter-node copies)."),
]
DispatchOpt = Annotated[
    Dispatch, typer.Option(help="normal: one copy per remote node; low-latency: one per remote expert.")
]
SchedulerOpt = Annotated[
    str | None,
    typer.Option(
        help="Dask scheduler address (tcp://host:8786) or local:N: summarise shards and solve layers on "
        "its workers, which open the trace files themselves (result unchanged; needs placer[dask])."
    ),
]


@contextmanager
def _cluster(scheduler: str, source: TraceSource | Trace | ExpertCounts) -> Iterator[Cluster]:
    """The Dask cluster ``scheduler`` (see placer.cluster); the trace must be native .npz files."""
    if not isinstance(source, TraceSource):
        raise InputError(None, "scheduler", "needs a native .npz trace or shard directory (convert with placer import)")
    with connect(scheduler) as cluster:
        yield cluster


def _print_json(obj: object) -> None:
    """Strict JSON: a non-finite number (NaN, infinity) is written as null, never bare."""
    sys.stdout.write(json.dumps(finite_json(obj), indent=2, allow_nan=False) + "\n")


def _topology(name: str, nodes: int | None, gpus_per_node: int | None) -> Topology:
    topology = instances.load_topology(name)
    for option, value in (("--nodes", nodes), ("--gpus-per-node", gpus_per_node)):
        if value is not None and value <= 0:
            raise InputError(None, option, f"expected a positive count, got {value}")
    return topology.resized(nodes, gpus_per_node)


def _report_results(results: list[tuple[str, ReplayReport]], title: str, as_json: bool, used: dict) -> None:
    """The comparison table, or JSON with ``used`` (the topology and model replayed on)."""
    if as_json:
        if len(results) == 1:
            _print_json({**results[0][1].to_dict(), **used})
        else:
            _print_json({"results": {name: report.to_dict() for name, report in results}, **used})
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
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="Dask scheduler address (tcp://host:8786) or local:N: summarise the shards on its workers, "
            "which open the trace files themselves (result unchanged; needs placer[dask])."
        ),
    ] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Trace statistics per layer and averaged: load skew, entropy, distinct sets, density."""
    source = workflow.open_trace(trace)
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
        markup=False,
        highlight=False,
    )
    console.print(stats_table(doc))
    if doc["distinct_sets_estimated"]:
        console.print(
            "note: distinct sets above 65,536 per layer are estimated (k-minimum-values sketch, "
            "about 0.4% relative error)",
            markup=False,
            highlight=False,
        )


@app.command("evaluate")
def evaluate_command(
    trace: Annotated[str, typer.Option(help="Trace .npz file or directory of shards to replay.")],
    placement: Annotated[
        list[str], typer.Option(help="contiguous, round-robin, random or a placement file; repeat to compare.")
    ],
    topology: ReplayTopologyOpt = None,
    nodes: NodesOpt = None,
    gpus_per_node: GpnOpt = None,
    model: ModelOpt = None,
    max_nodes: MaxNodesOpt = None,
    source: SourceOpt = Source.token,
    dispatch: DispatchOpt = Dispatch.normal,
    rule: RuleOpt = Rule.nearest,
    lp_batch: LpBatchOpt = LP_BATCH_TOKENS,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Replay a trace against placements: traffic per link tier, NIC and GPU load, a2a time."""
    source_trace = workflow.open_trace(trace)
    topo = placement_io.replay_topology(placement, topology, nodes, gpus_per_node)
    mdl = workflow.match_model(model, source_trace.num_experts, source_trace.top_k)
    experts = mdl.num_experts if mdl is not None else source_trace.num_experts
    entries = [workflow.load_placement(spec, source_trace.num_layers, experts, topo, mdl) for spec in placement]
    with terminal_progress(quiet) as progress:
        results = workflow.compare(
            source_trace,
            entries,
            topo,
            mdl,
            progress=progress,
            source=source.value,
            dispatch=dispatch.value,
            max_nodes=max_nodes,
            rule=rule.value,
            lp_batch=lp_batch,
        )
    reference = "" if len(results) == 1 else f" | ratios against {results[0][0]}, the first --placement"
    used = {"topology": topo.to_dict(), "model": None if mdl is None else mdl.to_dict()}
    _report_results(results, _title(trace, source_trace, topo, mdl, reference), as_json, used)


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
        typer.Option(
            help="Expert slots per GPU and layer: a number, or 'memory' for as many as fit (default: ceil(E / GPUs))."
        ),
    ] = None,
    memory_reserve: Annotated[
        float, typer.Option(help="Share of GPU memory kept for non-expert use when checking that experts fit.")
    ] = 0.0,
    time_limit: Annotated[float, typer.Option(help="Solver budget in seconds (deterministic effort).")] = 60.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    workers: Annotated[int, typer.Option(help="Processes solving layers in parallel (result unchanged).")] = 1,
    output_format: Annotated[
        OutputFormat,
        typer.Option(
            "--format",
            help="placer JSON, SGLang JSON, TensorRT-LLM YAML, EPLB .npz, expert permutation "
            "JSON; EXPERIMENTAL: vllm = eplb_config.initial_expert_map_path JSON (open vLLM PR #49572), "
            "vllm-ranks = --expert-placement-file JSON (open vLLM PR #34811).",
        ),
    ] = OutputFormat.placer,
    heldout: Annotated[
        str | None, typer.Option("--evaluate", help="Held-out trace to replay against the result and the baselines.")
    ] = None,
    exclude_gpus: Annotated[
        str | None, typer.Option(help="Comma-separated GPU ids out of service (e.g. failed): they get no experts.")
    ] = None,
    current: Annotated[
        str | None,
        typer.Option(help="Placement in service now: relabel nodes/GPUs of the result to move the fewest experts."),
    ] = None,
    max_nets: Annotated[
        str,
        typer.Option(
            help="Distinct top-k sets kept per layer while streaming the trace: a number, "
            "'all', or 'auto' (as many as the solver's search uses; bounds memory)."
        ),
    ] = "auto",
    rule: Annotated[
        Rule, typer.Option(help="Replica rule the engine will run: spare-slot replicas are packed for it.")
    ] = Rule.nearest,
    lp_batch: LpBatchOpt = LP_BATCH_TOKENS,
    alpha: AlphaOpt = None,
    scheduler: SchedulerOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Place every layer's experts on GPUs and nodes from a trace, and write the placement.

    Ctrl-C while layers are being solved writes the best placement so far (solved layers plus
    the spectral start of the others, marked interrupted) and exits with code 130.
    """
    check_output(out)
    refuse_overwriting_input(out, trace, *[given for given in (heldout, current, model, topology) if given])
    started = time.perf_counter()
    source = workflow.open_routing(trace)
    test = workflow.open_trace(heldout) if heldout else None
    if test is not None and not isinstance(source, ExpertCounts):
        _check_heldout(heldout, test, source)
    topo = _topology(topology, nodes, gpus_per_node)
    counts_only = isinstance(source, ExpertCounts)
    mdl = workflow.match_model(model, source.num_experts, None if counts_only else source.top_k)
    problem = PlacementProblem(
        topo,
        mdl,
        balance,
        max_nodes,
        max_nodes_coverage,
        keep_groups,
        _slots(slots_per_gpu),
        memory_reserve,
        tuple(_gpu_list(exclude_gpus)),
        rule.value,
        lp_batch,
    )
    in_service = placement_io.read_placement(current, topo.num_gpus, topo.gpus_per_node, mdl) if current else None
    with terminal_progress(quiet) as progress:
        settings = SolverSettings(
            solver.value, time_limit, seed, alpha, workers, None, progress, "best", _max_nets(max_nets)
        )
        with nullcontext() if scheduler is None else _cluster(scheduler, source) as cluster:
            result = workflow.place(source, problem, settings, current=in_service, cluster=cluster)
    chosen, solve_facts = result.placement, result.facts()
    launch = write_output(chosen, out, output_format.value, mdl)
    wall = time.perf_counter() - started
    interrupted = solve_facts.get("interrupted")
    results = []
    if test is not None and not interrupted:
        with terminal_progress(quiet) as progress:
            results = _against_baselines(test, f"placer {solver.value}", chosen, topo, mdl, max_nodes, progress,
                                         rule=problem.rule, lp_batch=problem.lp_batch)
    if as_json:
        _print_json(
            {
                "out": out,
                "wall_s": wall,
                "interrupted": bool(interrupted),
                "solve": solve_facts,
                "evaluation": {name: r.totals for name, r in results},
                "launch": launch,
            }
        )
        _exit_if_interrupted(out, output_format.value, solve_facts)
        return
    console.print(f"wrote {out} ({output_format.value} format) in {wall:.1f} s wall", markup=False, highlight=False)
    for line in launch:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    if result.report is not None and result.report.layers:
        console.print(f"{solver.value}: {result.report.quality()}", markup=False, highlight=False)
        for message in solve_facts["messages"]:
            console.print(f"note: {message}", markup=False, highlight=False)
        if solve_facts.get("interrupted"):
            console.print(f"INTERRUPTED: {solve_facts['interrupted']['note']}", markup=False, highlight=False)
    if "moves" in solve_facts:
        moves = solve_facts["moves"]
        console.print(
            f"from {current}: {moves['experts_moved']:,} expert copies to load "
            f"({moves['bytes_moved'] / 1e9:,.2f} GB of weights), {moves['without_relabel']:,} without relabelling",
            markup=False,
            highlight=False,
        )
    if results:
        console.print(comparison_table(results, _title(heldout, test, topo, mdl, " | held-out replay")))
        console.print(verdict(results, results[-1][0], results[0][0]), markup=False)
    _exit_if_interrupted(out, output_format.value, solve_facts)


def _check_heldout(path: str, test: TraceSource | Trace, source: TraceSource | Trace) -> None:
    """The held-out trace can be replayed against a placement of ``source`` (checked before solving)."""
    if test.num_layers != source.num_layers:
        raise InputError(path, "--evaluate", f"{test.num_layers} layers; the trace placed from has {source.num_layers}")
    if test.num_experts > source.num_experts:
        raise InputError(
            path, "--evaluate", f"uses {test.num_experts} experts; the trace placed from has {source.num_experts}"
        )


def _exit_if_interrupted(out: str, output_format: str, solve_facts: dict) -> None:
    """After Ctrl-C cut the solve short: say what was written, on one stderr line, and exit 130."""
    interrupted = solve_facts.get("interrupted")
    if not interrupted:
        return
    marked = (
        "marked interrupted in its solver metadata"
        if output_format == "placer"
        else f"the {output_format} format cannot record that"
    )
    Console(stderr=True).print(
        f"placer: interrupted: wrote the best placement so far to {out} ({interrupted['note']}; {marked})",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    sys.exit(130)  # not typer.Exit: main() reads a 130 returned by typer as an unreported Ctrl-C


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
    if not (requested.isascii() and requested.isdigit()):
        raise InputError(None, "--max-nets", f"expected a count, 'all' or 'auto', got {requested!r}")
    return int(requested)


def _slots(requested: str | None) -> int | str | None:
    """--slots-per-gpu: a positive count, 'memory' or None (checked by the problem)."""
    if requested is None or requested == "memory":
        return requested
    if not (requested.isascii() and requested.isdigit()):
        raise InputError(None, "--slots-per-gpu", f"expected a positive integer or 'memory', got {requested!r}")
    return int(requested)


def _against_baselines(
    test: TraceSource | Trace,
    label: str,
    chosen: Placement,
    topo: Topology,
    mdl: Model | None,
    max_nodes: int | None,
    progress: ProgressFn | None = None,
    **replay: object,
) -> list[tuple[str, ReplayReport]]:
    """Replay ``test`` against the three baselines and ``chosen`` (last); ``replay``: further
    options of :func:`placer.evaluation.replay.evaluate` (rule, lp_batch)."""
    entries = workflow.with_baselines({label: chosen}, BASELINES, test.num_layers, chosen.num_experts, topo)
    return workflow.compare(test, entries, topo, mdl, progress=progress, max_nodes=max_nodes, **replay)


@app.command("report")
def report_command(
    trace: Annotated[str, typer.Option(help="Trace .npz file or directory of shards to replay.")],
    placement: Annotated[list[str], typer.Option(help="contiguous, round-robin, random or a placement file; repeat.")],
    out: Annotated[str, typer.Option(help="Output folder: index.html (or report.md) and the PNGs.")],
    output_format: Annotated[
        ReportFormat, typer.Option("--format", help="html (one self-contained file) or md.")
    ] = ReportFormat.html,
    topology: ReplayTopologyOpt = None,
    nodes: NodesOpt = None,
    gpus_per_node: GpnOpt = None,
    model: ModelOpt = None,
    max_nodes: MaxNodesOpt = None,
    source: SourceOpt = Source.token,
    dispatch: DispatchOpt = Dispatch.normal,
    rule: RuleOpt = Rule.nearest,
    lp_batch: LpBatchOpt = LP_BATCH_TOKENS,
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
    input_path(out, "out")
    source_trace = workflow.open_trace(trace)
    topo = placement_io.replay_topology(placement, topology, nodes, gpus_per_node)
    mdl = workflow.match_model(model, source_trace.num_experts, source_trace.top_k)
    experts = mdl.num_experts if mdl is not None else source_trace.num_experts
    chosen = [workflow.load_placement(spec, source_trace.num_layers, experts, topo, mdl) for spec in placement]
    labels = [label for label, _ in chosen]
    placements = {(spec if labels.count(label) > 1 else label): p for spec, (label, p) in zip(placement, chosen)}
    with terminal_progress(quiet) as progress:
        page = write_report(
            source_trace,
            placements,
            topo,
            mdl,
            out,
            title=title,
            format=output_format.value,
            baselines=() if no_baselines else BASELINES,
            layer=layer,
            source=source.value,
            dispatch=dispatch.value,
            max_nodes=max_nodes,
            rule=rule.value,
            lp_batch=lp_batch,
            trace_label=trace,
            inputs=[s for s in placement if s not in BASELINES],
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
    topology: ReplayTopologyOpt = None,
    nodes: NodesOpt = None,
    gpus_per_node: GpnOpt = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Model preset name or .toml file: also check its expert count and that the experts fit in GPU memory."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check a placement: schema, every expert in every layer, slots, memory, EP divisibility."""
    topo = placement_io.replay_topology([placement], topology, nodes, gpus_per_node)
    mdl = instances.load_model(model) if model else None
    chosen = placement_io.read_placement(placement, topo.num_gpus, topo.gpus_per_node, mdl)
    if mdl is None and str((chosen.metadata.get("solver") or {}).get("name", "")).startswith("sglang:"):
        raise InputError(
            placement,
            "--model",
            "an SGLang map records no expert count, so an expert it never "
            "places cannot be found: give the model it was made for",
        )
    facts = placement_io.check_against(placement, chosen, topo, mdl)
    if as_json:
        _print_json({"valid": True, **facts})
    else:
        console.print(key_value_table({"valid": True, **facts}, f"{placement}: valid"))


@app.command("schema")
def schema_command(
    as_json: Annotated[
        bool, typer.Option("--json", help="Accepted for uniformity: the schema is always JSON.")
    ] = False,
) -> None:
    """Print the JSON Schema of placer's placement file."""
    _print_json(placement_io.placement_schema())


@app.command("calc")
def calc_command(
    model: Annotated[str, typer.Option(help="Model preset name or .toml file.")] = "deepseek-v3",
    ep: Annotated[int, typer.Option(help="Expert-parallel size (GPUs).")] = 256,
    tokens_per_gpu: Annotated[int, typer.Option(help="Tokens per GPU per micro-batch.")] = 4096,
    gpus_per_node: Annotated[int, typer.Option("--gpus-per-node", help="GPUs per node.")] = 8,
    max_nodes: Annotated[
        int | None,
        typer.Option("--max-nodes", help="A token reaches at most M nodes (node-limited routing, as DeepSeek-V3)."),
    ] = None,
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
        console.print(calc_figures(volume))


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
    trace: Annotated[
        str | None, typer.Option(help="Routing trace to solve placer's placement on (default: uniform routing).")
    ] = None,
    eval_trace: Annotated[
        str | None, typer.Option(help="Trace to replay (ideally held out; default: --trace).")
    ] = None,
    ep: Annotated[str, typer.Option(help="Comma-separated EP sizes.")] = ",".join(map(str, sweep.DEFAULT_EPS)),
    tokens_per_step: Annotated[
        int, typer.Option(help="Tokens per training step, whole cluster.")
    ] = sweep.DEFAULT_TOKENS_PER_STEP,
    dispatch: DispatchOpt = Dispatch.normal,
    peer_latency: Annotated[
        float, typer.Option(help="Seconds per inter-node peer per all-to-all phase (0: bandwidth + fixed latency).")
    ] = 0.0,
    solver: Annotated[str, typer.Option(help="placer's solver: spectral, auto, ilp, eplb.")] = "spectral",
    seed: Annotated[int, typer.Option(help="Solver seed.")] = 0,
    alpha: AlphaOpt = None,
    out: Annotated[str | None, typer.Option(help="Directory for sweep.json and sweep.png.")] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="Dask scheduler address or local:N: solve and replay each EP size as a task on its workers "
            "(result unchanged; needs placer[dask])."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Inter- and intra-node GB per training step and a2a/compute time as EP grows: contiguous vs placer."""
    mdl, topo = instances.load_model(model), instances.load_topology(topology)
    inputs = [p for p in (trace, eval_trace) if p is not None]
    targets = [] if out is None else [Path(out), Path(out) / "sweep.json", Path(out) / "sweep.png"]
    for target in targets:
        refuse_overwriting_input(target, *inputs)
    step = sweep.StepModel(tokens_per_step, dispatch.value, peer_latency)
    plots = _plots() if out is not None else None
    with nullcontext() if scheduler is None else connect(scheduler) as cluster:
        result = sweep.run_sweep(
            mdl,
            topo,
            None if trace is None else workflow.open_trace(trace),
            None if eval_trace is None else workflow.open_trace(eval_trace),
            eps=_ep_list(ep),
            step=step,
            solver=solver,
            seed=seed,
            alpha=alpha,
            mapper=map if cluster is None else cluster.map,
        )
    facts = {**result.to_dict(), "trace": trace, "eval_trace": eval_trace}
    written = []
    if out is not None:
        write_text_atomic(targets[1], json.dumps(finite_json(facts), indent=2, allow_nan=False) + "\n")
        written.append(str(targets[1]))
        if plots is not None:
            _write_sweep_png(plots, result, targets[2])
            written.append(str(targets[2]))
    if as_json:
        _print_json(facts)
    else:
        console.print(sweep_table(result), sweep_notes(result))
        if written:
            console.print(f"wrote {' and '.join(written)}", markup=False)
    if out is not None and plots is None:
        Console(stderr=True).print(
            f"placer: {targets[2]} not drawn: matplotlib is not installed; pip install 'placer[plots]' and run "
            "again for the figure",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


def _plots() -> ModuleType | None:
    """placer.presentation.plots, or None when matplotlib is not installed."""
    try:
        from placer.presentation import plots
    except ImportError:
        return None
    return plots


def _write_sweep_png(plots: ModuleType, result: sweep.SweepResult, path: Path) -> None:
    """The sweep's figure, with seed 001's figures marked when the model is seed001."""
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
    summary = {
        path: {"tokens": t.num_tokens, "layers": t.num_layers, "top_k": t.top_k, "sequences": len(t.seq_lens)}
        for path, t in outputs.items()
    }
    if as_json:
        _print_json(summary)
    else:
        for path, facts in summary.items():
            console.print(
                f"wrote {path}: {facts['tokens']:,} tokens, {facts['sequences']} sequences, "
                f"{facts['layers']} layers, top-{facts['top_k']}"
            )


NumExpertsOpt = Annotated[
    int | None, typer.Option(help="Experts per layer, for formats that do not record it (default: largest id + 1).")
]
ImportOutOpt = Annotated[str, typer.Option(help="Output: .npz for a routing trace, .npy for expert counts.")]
ImportModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Model preset or .toml: names the dense layers (first_dense_layers), checks the layer count and "
        "the expert count (default: constant / all-zero layers are the dense ones).",
    ),
]


def _import_model(name: str | None) -> Model | None:
    return instances.load_model(name) if name else None


def _write_imported(result: Imported, out: str, inputs: list[str], as_json: bool) -> None:
    """Save an import (trace -> .npz, counts -> .npy) and say what was written and noted."""
    routing = result.routing
    for given in inputs:
        refuse_overwriting_input(out, given)
    wanted = ".npy" if isinstance(routing, ExpertCounts) else ".npz"
    if Path(out).suffix != wanted:
        kind = "expert counts" if wanted == ".npy" else "a routing trace"
        raise InputError(out, "--out", f"this input holds {kind}; write a {wanted} file")
    notes = list(result.notes)
    if isinstance(routing, ExpertCounts):
        save_counts(routing, out)
        facts = {
            "out": out,
            "kind": "counts",
            "layers": routing.num_layers,
            "experts": routing.num_experts,
            "layer_ids": recorded_layer_ids(routing),
        }
        if routing.layer_ids is not None:
            notes.append(counts_layer_note(routing.layer_ids))
    else:
        save_trace(routing, out)
        facts = {
            "out": out,
            "kind": "trace",
            "tokens": routing.num_tokens,
            "layers": routing.num_layers,
            "top_k": routing.top_k,
            "experts": routing.num_experts,
            "layer_ids": recorded_layer_ids(routing),
        }
    if as_json:
        _print_json({**facts, "notes": notes})
        return
    details = ", ".join(f"{key} {value:,}" for key, value in facts.items() if isinstance(value, int))
    console.print(f"wrote {out}: {facts['kind']}, {details}", markup=False, highlight=False)
    for note in notes:
        console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)


def _layer_counts(text: str | None) -> list[int] | None:
    """--pipeline-layers "13,13" -> [13, 13]."""
    if not text:
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise InputError(None, "--pipeline-layers", f"expected comma-separated layer counts, got {text!r}") from None


@import_app.command("megatron")
def import_megatron_command(
    source: Annotated[str, typer.Argument(help="Directory of router_trace_rank<R>.jsonl files, or one file.")],
    out: ImportOutOpt,
    num_experts: NumExpertsOpt = None,
    pipeline_layers: Annotated[
        str | None,
        typer.Option(
            help="Decoder layers per pipeline stage, e.g. 13,13: the records' layer ids are stage-local under "
            "pipeline parallelism (ranks are stage-major)."
        ),
    ] = None,
    layer_numbers: Annotated[
        bool,
        typer.Option(
            "--layer-numbers",
            help="The records' layer is Megatron's 1-based global layer number, as its inference writes it with "
            "--moe-enable-routing-replay (default: the 0-based module index decoder.layers.{i}).",
        ),
    ] = False,
    model: ImportModelOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Import Megatron-Core --moe-routing-trace-path output."""
    with terminal_progress(quiet) as progress:
        result = read_megatron(source, num_experts, progress, _layer_counts(pipeline_layers), _import_model(model),
                               layer_numbers)
    _write_imported(result, out, [source], as_json)


@import_app.command("vllm")
def import_vllm_command(
    files: Annotated[
        list[str], typer.Argument(help="routed_experts .npy files [tokens, num_hidden_layers, top_k], one per request.")
    ],
    out: ImportOutOpt,
    num_experts: NumExpertsOpt = None,
    model: ImportModelOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Import vLLM routed_experts arrays (dense layers dropped, decoder-layer ids kept)."""
    with terminal_progress(quiet) as progress:
        result = read_vllm(files, num_experts, progress, _import_model(model))
    _write_imported(result, out, files, as_json)


@import_app.command("sglang")
def import_sglang_command(
    dump: Annotated[
        str,
        typer.Argument(
            help="SGLang expert-distribution dump(s): a .pt file, a directory of them or a quoted glob "
            "(per_token: one file per rank, merged; stat mode: summed)."
        ),
    ],
    out: ImportOutOpt,
    num_experts: NumExpertsOpt = None,
    model: ImportModelOpt = None,
    in_service: Annotated[
        str | None,
        typer.Option(
            help="Also write the dump's last_physical_to_logical_map (the placement in service) as an SGLang "
            "JSON map, usable as place --current."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Import SGLang expert-distribution dumps (needs the `sglang` extra: torch)."""
    result = read_sglang(dump, num_experts, _import_model(model))
    if in_service:
        if result.in_service is None:
            raise InputError(dump, "--in-service", "stat dumps record no placement (per_token dumps do)")
        refuse_overwriting_input(in_service, dump)
        write_text_atomic(in_service, json.dumps({"physical_to_logical_map": result.in_service.tolist()}) + "\n")
    _write_imported(result, out, [dump], as_json)


@import_app.command("sglang-routed")
def import_sglang_routed_command(
    responses: Annotated[
        str,
        typer.Argument(
            help="JSONL of SGLang /generate responses with meta_info.routed_experts (return_routed_experts)."
        ),
    ],
    out: ImportOutOpt,
    model: ImportModelOpt = None,
    layers: Annotated[int | None, typer.Option(help="Decoder layers (num_hidden_layers), without --model.")] = None,
    top_k: Annotated[int | None, typer.Option(help="Experts per token, without --model.")] = None,
    num_experts: NumExpertsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Import SGLang return_routed_experts responses (base64 int32 [tokens, layers, k] each)."""
    result = read_sglang_routed(responses, _import_model(model), layers, top_k, num_experts)
    _write_imported(result, out, [responses], as_json)


@import_app.command("trtllm")
def import_trtllm_command(
    directory: Annotated[str, typer.Argument(help="TensorRT-LLM expert statistics directory (meta_info.json).")],
    out: ImportOutOpt,
    model: ImportModelOpt = None,
    assignment: Annotated[
        str | None,
        typer.Option(
            help="Load-balancer config (YAML with initial_global_assignments): maps the slot ids of statistics "
            "recorded with the MoE load balancer on to experts."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Import TensorRT-LLM expert statistics (needs the `trtllm` extra: safetensors, PyYAML)."""
    slots = read_assignments(assignment) if assignment else None
    _write_imported(read_trtllm(directory, _import_model(model), slots), out, [directory], as_json)


Policy = _choices("Policy", POLICIES)


def _stream(path: str, quiet: bool) -> Trace:
    """A time-ordered trace in memory: a native .npz trace, or an ESFT root directory (its four
    tasks concatenated in order, sequences in order)."""
    given = Path(path)
    if given.is_dir() and any((given / task).is_dir() for task in ESFT_TASKS):
        with terminal_progress(quiet) as progress:
            return import_esft(given, progress=progress)
    source = workflow.open_trace(path)
    return source.load() if isinstance(source, TraceSource) else source


@app.command("replay")
def replay_command(
    trace: Annotated[str, typer.Option(help="Time-ordered trace (.npz or shards) or an ESFT root directory.")],
    window: Annotated[
        int,
        typer.Option(
            help="Tokens per window: each window is served by the placement decided from the windows before it."
        ),
    ] = 4000,
    slots_per_gpu: Annotated[
        int, typer.Option("--slots-per-gpu", help="Expert slots per GPU (spare slots hold replicas).")
    ] = 2,
    policy: Annotated[list[Policy] | None, typer.Option(help="Policies to compare (repeat; default all).")] = None,
    topology: TopologyOpt = "h100-dgx",
    nodes: NodesOpt = None,
    gpus_per_node: GpnOpt = None,
    model: ModelOpt = None,
    dispatch: DispatchOpt = Dispatch.normal,
    rule: RuleOpt = Rule.nearest,
    lp_batch: LpBatchOpt = LP_BATCH_TOKENS,
    solver: Annotated[
        SolverChoice, typer.Option(help="Solver of the fresh solves (static, naive, oracle).")
    ] = SolverChoice.spectral,
    time_limit: Annotated[float, typer.Option(help="Seconds per fresh solve.")] = 60.0,
    seed: Annotated[int, typer.Option(help="Seed of the solves and the rebalancer.")] = 0,
    half_life: Annotated[float | None, typer.Option(help="Rebalancer window half-life in tokens.")] = None,
    move_budget: Annotated[float | None, typer.Option(help="Rebalancer: share of slots movable per rebalance.")] = None,
    min_gain: Annotated[
        float | None, typer.Option(help="Rebalancer: least predicted gain worth moving a layer.")
    ] = None,
    plot: Annotated[
        str | None, typer.Option(help="Write the timeline figure to this PNG (needs placer[plots]).")
    ] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Timeline replay: policies side by side over a time-ordered trace cut into windows."""
    if solver.value not in ("auto", "spectral", "ilp"):
        raise InputError(None, "--solver", f"expected auto, spectral or ilp, got {solver.value}")
    overrides = {
        name: value
        for name, value in (("half_life_tokens", half_life), ("move_budget", move_budget), ("min_gain", min_gain))
        if value is not None
    }
    flags = {"half_life_tokens": "--half-life", "move_budget": "--move-budget", "min_gain": "--min-gain"}
    try:
        config = replace(RebalanceConfig(), **overrides)
    except InputError as err:
        raise InputError(None, flags.get(err.field or "", err.field), err.message) from None
    stream = _stream(trace, quiet)
    topo = _topology(topology, nodes, gpus_per_node)
    mdl = workflow.match_model(model, stream.num_experts, stream.top_k)
    policies = [p.value for p in policy] if policy else list(POLICIES)
    with terminal_progress(quiet) as progress:
        result = replay_timeline(
            stream,
            topo,
            mdl,
            window_tokens=window,
            slots_per_gpu=slots_per_gpu,
            policies=policies,
            config=config,
            rule=rule.value,
            lp_batch=lp_batch,
            dispatch=dispatch.value,
            solver=solver.value,
            time_limit=time_limit,
            seed=seed,
            progress=progress,
        )
    if plot is not None:
        from placer.presentation import plots

        with atomic_output(plot) as target:
            plots.save_png(plots.timeline(result, title=f"{Path(trace).name}: policies over time"), target)
    if as_json:
        _print_json(result.to_dict())
        return
    console.print(
        _title(trace, stream, topo, mdl, f" | {slots_per_gpu} slots/GPU, rule {rule.value}"),
        markup=False,
        highlight=False,
    )
    for table in timeline_tables(result):
        console.print(table)


@app.command("synth")
def synth_command(
    preset: Annotated[
        str, typer.Option(help="esft, deepseek-v3, kimi-k2, qwen3-235b, seed001, or a .toml with [synth].")
    ],
    tokens: Annotated[int, typer.Option(help="Tokens to generate.")],
    out: Annotated[str, typer.Option(help=".npz file, or a directory of shards (with --shard-tokens).")],
    split: Annotated[Split, typer.Option(help="train, or test (applies the preset's domain drift).")] = Split.train,
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 0,
    shard_tokens: Annotated[
        int | None, typer.Option(help="Write shards of about T tokens (cut at sequence starts).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing shards in OUT.")] = False,
    phases: Annotated[
        int,
        typer.Option(
            help="A drifting stream: P phases in order, phase p drawn from the "
            "test split with drift p x --drift-step (one .npz)."
        ),
    ] = 1,
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
            paths = synth.write_trace(
                params,
                tokens,
                out,
                seed=seed,
                split=split.value,
                shard_tokens=shard_tokens,
                overwrite=overwrite,
                progress=progress,
            )
    seconds = time.perf_counter() - started
    if as_json:
        _print_json(
            {
                "preset": preset,
                "params": synth.describe(params),
                "tokens": tokens,
                "split": split.value,
                "seed": seed,
                "files": [str(p) for p in paths],
                "seconds": seconds,
            }
        )
    else:
        what = f"{phases}-phase" if phases > 1 else split.value
        console.print(
            f"wrote {tokens:,} {what} tokens of {preset} to {out} ({len(paths)} file(s)) in {seconds:.1f} s",
            markup=False,
            highlight=False,
        )


@app.command("demo")
def demo_command(as_json: JsonOpt = False, quiet: QuietOpt = False) -> None:
    """Place the embedded ESFT sample's first half (spectral), replay its held-out half vs the baselines."""
    train, test = TraceSource(sample_trace("train")), TraceSource(sample_trace("test"))
    topo = instances.load_topology("h100-dgx").resized(4, 8)
    mdl = instances.load_model("deepseek-v2-lite")
    started = time.perf_counter()
    with terminal_progress(quiet) as progress:
        result = workflow.place(train, PlacementProblem(topo, mdl), SolverSettings("spectral", progress=progress))
        chosen, report = result.placement, result.report
        wall = time.perf_counter() - started
        results = _against_baselines(test, "placer spectral", chosen, topo, mdl, None, progress)
    if as_json:
        _print_json({"wall_s": wall, "solve": report.to_dict(), "evaluation": {n: r.totals for n, r in results}})
        return
    console.print(
        f"placed {train.num_tokens:,} tokens of the embedded ESFT sample (intent, first half) "
        f"with spectral in {wall:.1f} s; replaying the held-out half:",
        markup=False,
        highlight=False,
    )
    console.print(comparison_table(results, _title("embedded ESFT sample (intent, held-out half)", test, topo, mdl)))
    console.print(verdict(results, results[-1][0], results[0][0]), markup=False)


def main() -> None:
    """Entry point: run the app; input and usage errors become one line and exit code 2, Ctrl-C
    and SIGTERM one line saying what was written (exit 130 and 143)."""
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        with recording_outputs() as written:
            _run(written)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(written: WrittenFiles) -> None:
    """The app, its failures turned into one line and an exit code."""
    try:
        code = app(standalone_mode=False)
    except (InputError, InfeasibleError) as err:
        _say(f"error: {_in_flags(err)}")
        sys.exit(2)
    except click_errors.NoArgsIsHelpError:  # the help was printed while the error was built
        sys.exit(2)
    except click_errors.ClickException as err:
        _say(f"error: {_usage_line(err)}")
        sys.exit(err.exit_code)
    except typer.Abort:
        _say_interrupted(written)
        sys.exit(130)
    except (KeyboardInterrupt, SystemError) as err:
        if not is_ctrl_c(err):
            raise
        _say_interrupted(written)
        sys.exit(130)
    except SystemExit as err:
        if err.code == TERMINATED:
            _say_interrupted(written, "terminated (SIGTERM)")
        raise
    if code == 130:  # typer returns 130 for a Ctrl-C it caught
        _say_interrupted(written)
    sys.exit(code or 0)


TERMINATED = 128 + signal.SIGTERM
"""Exit code after SIGTERM."""


def _on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C (workers stopped, temporaries removed), then exits 143."""
    raise SystemExit(TERMINATED)


def _usage_line(err: click_errors.ClickException) -> str:
    """A click usage error on one line, naming the command."""
    message = " ".join(err.format_message().split())
    ctx = getattr(err, "ctx", None)
    return (
        f"{ctx.command_path.removeprefix(ctx.find_root().info_name or '').strip() or 'placer'}: {message}"
        if ctx is not None
        else message
    )


def _say(text: str) -> None:
    Console(stderr=True).print(f"placer: {text}", markup=False, highlight=False, soft_wrap=True)


#: library fields the user sets with a flag of another name
FLAG_OF_FIELD = {
    "output_format": "--format",
    "excluded_gpus": "--exclude-gpus",
    "dispatch_bytes_per_element": "--dispatch-bytes",
    "combine_bytes_per_element": "--combine-bytes",
}
#: library fields the user sets with the flag of the same name
FLAG_FIELDS = frozenset(
    {
        "alpha",
        "balance",
        "current",
        "dispatch",
        "exclude_gpus",
        "keep_groups",
        "layer_numbers",
        "lp_batch",
        "max_nets",
        "max_nodes",
        "max_nodes_coverage",
        "memory_reserve",
        "model",
        "out",
        "pipeline_layers",
        "rule",
        "scheduler",
        "seed",
        "slots_per_gpu",
        "nodes",
        "gpus_per_node",
        "tokens",
        "shard_tokens",
        "layer",
        "ep",
        "tokens_per_gpu",
        "solver",
        "source",
        "time_limit",
        "topology",
        "trace",
        "workers",
    }
)


def _in_flags(err: Exception) -> str:
    """An error as the CLI user reads it: a library field they set by a flag named as that flag."""
    if not isinstance(err, InputError) or err.field is None:
        return str(err)
    flag = FLAG_OF_FIELD.get(err.field) or ("--" + err.field.replace("_", "-") if err.field in FLAG_FIELDS else None)
    return str(err) if flag is None else str(InputError(err.source, flag, err.message))


def _say_interrupted(written: WrittenFiles, what: str = "interrupted") -> None:
    """One line saying what the stopped command did write (outputs are atomic: each listed file
    is complete, every other output untouched)."""
    files = written.existing()
    done = f"wrote {', '.join(files)} before stopping" if files else "no output was written"
    _say(f"{what}; {done}")


def _caused_by_ctrl_c(err: BaseException) -> bool:
    """Whether a Ctrl-C is among the exceptions that led to ``err`` (its cause/context chain)."""
    seen: BaseException | None = err
    while seen is not None:
        if is_ctrl_c(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
