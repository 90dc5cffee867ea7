"""`python -m export.trt check`: is a TensorRT plan miscompiled, or is the export bad?

    python -m export.trt check --engine DIR [--image FILE] [--prompt TEXT] [--atol A] [--rtol R] [--json]

Runs the same real inputs through each plan of the folder (`manifest.trt`) and the ONNX graph it
was built from (ONNX Runtime on the CPU: the reference), both as Polygraphy runners:

    case     plan, profile    inputs                                                   outputs
    vision   vision.plan  0   pixel_values of --image (default: calib/images' first)   image_embeds
    prefill  decoder.plan 0   the chat prompt's embeddings, the ONNX image embeddings   logits, new_key.i,
                              spliced in; positions 0..P-1; past_* with 0 rows          new_value.i
    decode   decoder.plan 1   the ONNX prefill's argmax token for each of B sequences  the same
                              (B: the width the runtime decodes at), sequence b at
                              position P-b; past_* = the ONNX prefill's K/V (P rows)
                              for every sequence, of which b sees its first P-b

Both sides of a case get identical inputs (ONNX outputs feed the next case), so a divergence
belongs to that plan and profile alone.  An output passes when every element is within atol or
within rtol of the ONNX value (Polygraphy's elementwise check; rel diffs are relative to the ONNX
value, so elements near 0 may show a large one that atol covers).  The next token (argmax of the
logits) is reported, not judged: a near-tie may flip within tolerance.

Output: a table of plan, profile, output, max abs / rel diff, tolerance, pass/FAIL (or JSON).
Exit 0: all within tolerance, the plans compute what their ONNX graphs do (so wrong answers come
from the export); 1: some output diverges, the plan is miscompiled; 2: a user error.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from calib.calibrate import DEFAULT_IMAGES
from calib.sources import IMAGE_EXTS
from runtime import graph_io as io
from runtime import trt_compat
from runtime.api import vision_pixels
from runtime.backend_select import plan_mismatch, rebuild_hint
from runtime.chat import ChatTokenizer
from runtime.cli_output import error_line
from runtime.cli_parser import CliParser
from runtime.embedding import TokenEmbedding
from runtime.engine_check import check_graph_records
from runtime.errors import EngineError, FlashVLError, ImageError
from runtime.files import verify_files
from runtime.image import load_image
from runtime.manifest import GraphSpec, Manifest, PlanSpec, load_manifest
from runtime.tiling import gather_tokens
from runtime.trt_profiles import DECODE, PREFILL, check_shape


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


# Default tolerances by the plan's precision.  A miscompiled plan (a wrong tactic or fusion, a
# broken profile) is off by O(1); these only absorb reordered sums and fused kernels:
#   fp32  TF32 is off in export.trt's builds, so differences are fp32 rounding (~1e-6 per op) grown
#         over the layers; 1e-3 leaves a wide margin and still catches any real bug
#   fp16  half has an 11-bit mantissa (eps ~1e-3); TensorRT's fp16 kernels and ONNX Runtime's CPU
#         fp16 (often computed in fp32) differ by a few ulps per op, over every layer
#   int8  a rounding tie in a QuantizeLinear moves an activation by a whole quantization step
#         (~1% of the tensor's range), and that propagates
#   int4  weight-only: both sides dequantize the same weights, but fused int4 GEMMs accumulate in fp16
TOLERANCES = {
    "fp32": Tolerance(1e-3, 1e-3),
    "fp16": Tolerance(2e-2, 2e-2),
    "int8": Tolerance(1e-1, 1e-1),
    "int4": Tolerance(1e-1, 1e-1),
}


@dataclass(frozen=True)
class Case:
    plan: PlanSpec
    profile: int  # TensorRT optimization profile index (PlanSpec.profiles)
    feed: dict[str, np.ndarray]  # input name -> array, in the graph's dtypes


@dataclass(frozen=True)
class OutputDiff:
    plan: str
    profile: str  # "1 decode"
    output: str
    max_abs: float  # NaN: TensorRT did not give this output
    max_rel: float
    atol: float
    rtol: float
    passed: bool


@dataclass(frozen=True)
class NextToken:
    plan: str
    profile: str
    onnx: int
    tensorrt: int


@dataclass(frozen=True)
class Report:
    engine: str
    image: str
    prompt: str
    prompt_tokens: int
    outputs: tuple[OutputDiff, ...]
    next_tokens: tuple[NextToken, ...]

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)


OnnxRunnerFor = Callable[[PlanSpec], object]  # plan -> a Polygraphy runner of the ONNX graph it was built from
TrtRunnerFor = Callable[[PlanSpec, int], object]  # (plan, profile index) -> a Polygraphy runner of the plan


def tolerance(precision: str, atol: float | None, rtol: float | None) -> Tolerance:
    if precision not in TOLERANCES:
        raise EngineError(f"plan precision must be one of {list(TOLERANCES)}, got {precision!r}; rebuild the plans")
    t = TOLERANCES[precision]
    return Tolerance(t.atol if atol is None else atol, t.rtol if rtol is None else rtol)


def compare_case(case: Case, onnx, trt, tol: Tolerance) -> tuple[list[OutputDiff], NextToken | None, dict]:
    """Run one case through both runners; (one row per ONNX output, the next tokens, the ONNX outputs)."""
    from polygraphy.comparator import Comparator
    from polygraphy.comparator.compare import SimpleCompareFunc
    from polygraphy.exception import PolygraphyException
    from polygraphy.logger import G_LOGGER

    assert trt.name != onnx.name, "Polygraphy keys results by runner name"
    profile = case.plan.profiles[case.profile]
    label = f"{case.profile} {profile.name}"
    for name, x in case.feed.items():
        check_shape(profile, name, x.shape, case.plan.file)
    compare = SimpleCompareFunc(atol=tol.atol, rtol=tol.rtol, check_error_stat="elemwise")
    try:
        with G_LOGGER.verbosity(G_LOGGER.CRITICAL):  # the table is the report; Polygraphy's log would repeat it
            runs = Comparator.run([trt, onnx], data_loader=[case.feed])  # TensorRT first: rel diffs are of ONNX
            stats = Comparator.compare_accuracy(runs, compare_func=compare)[0][(trt.name, onnx.name)][0]
    except PolygraphyException as e:
        raise EngineError(f"{case.plan.file} profile {label}: the run failed ({' '.join(str(e).split())[:300]}); "
                          f"if TensorRT could not load the plan (built on another GPU?), rebuild it on this machine "
                          f"with `python -m export.trt --engine DIR`") from None
    got, ref = runs[0][1][0], runs[1][1][0]  # IterationResult: output name -> array
    rows = []
    for name in ref.keys():
        s = stats.get(name)  # None: the plan lacks this output; bool(s) is the verdict
        rows.append(OutputDiff(case.plan.file, label, name, math.nan if s is None else s.max_absdiff,
                               math.nan if s is None else s.max_reldiff, tol.atol, tol.rtol, s is not None and bool(s)))
    token = None
    if io.LOGITS in ref.keys() and io.LOGITS in got.keys():
        token = NextToken(case.plan.file, label, int(ref[io.LOGITS][0].argmax()), int(got[io.LOGITS][0].argmax()))
    return rows, token, {name: np.asarray(ref[name]) for name in ref.keys()}


def check(engine_dir: Path, manifest: Manifest, image: Path, prompt: str, onnx_runner_for: OnnxRunnerFor,
          trt_runner_for: TrtRunnerFor, atol: float | None = None, rtol: float | None = None) -> Report:
    """The three cases, in order: vision, prefill, one decode step."""
    m, t, d = manifest, manifest.trt, manifest.decoder
    tokenizer = ChatTokenizer.load(engine_dir / m.tokenizer, m.tokens, m.chat, m.decoder.vocab_size)
    embed = TokenEmbedding(engine_dir / m.embeddings.file, m.embeddings, m.tokens.image_pad_id)
    rows, tokens = [], []

    def run(plan: PlanSpec, profile: int, graph: GraphSpec, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {k: v.astype(graph.input(k).dtype) for k, v in feed.items()}  # explicit casts at the graph boundary
        r, token, ref = compare_case(Case(plan, profile, feed), onnx_runner_for(plan), trt_runner_for(plan, profile),
                                     tolerance(plan.precision, atol, rtol))
        rows.extend(r)
        tokens.extend([token] if token else [])
        return ref

    # 1. vision: the image through the runtime's preprocessing
    rgb = load_image(str(image), channels="rgb", background=m.preprocess.alpha_background)  # [H, W, 3]
    pixels, layout = vision_pixels(rgb, m)  # [tiles, 3, S, S]
    embeds = run(t.vision, 0, m.graphs.vision, {io.PIXEL_VALUES: pixels})[io.IMAGE_EMBEDS]  # [tiles, n*n, D]
    embeds = embeds if layout is None else gather_tokens(embeds, layout)[None]  # [1, N, D]
    # 2. prefill: the chat prompt with the ONNX image embeddings, after an empty cache
    ids = tokenizer.encode_prompt(prompt, image_tokens=embeds.shape[1], system=None)  # [P]
    p = len(ids)
    empty = np.zeros((0, 1, d.n_kv_heads, d.head_dim), np.float32)  # [0, B, Hkv, hd]
    feed = {io.INPUTS_EMBEDS: embed.prompt(ids, embeds.astype(np.float32)), io.POSITION_IDS: np.arange(p)[None]}
    feed.update({name: empty for i in range(d.n_layers) for name in (io.past_key(i), io.past_value(i))})
    ref = run(t.decoder, PREFILL, m.graphs.decoder, feed)
    # 3. decode: the ONNX prefill's next token, at the runtime's decode width B (the TensorRT backend always
    #    decodes all its slots): sequence b at position P-b sees the first P-b of the P cached rows (ragged)
    b = min(t.max_batch, m.graphs.decoder.max_batch, p)  # graphs before schema 5 mask by shape: B = 1
    token = int(ref[io.LOGITS][0].argmax())
    feed = {io.INPUTS_EMBEDS: embed.tokens(np.full(b, token))[0][:, None],  # [1, B, D] -> [B, 1, D]
            io.POSITION_IDS: np.arange(p, p - b, -1)[:, None]}  # [B, 1]
    for i in range(d.n_layers):
        for past, new in ((io.past_key(i), io.new_key(i)), (io.past_value(i), io.new_value(i))):
            feed[past] = np.repeat(ref[new], b, axis=1)  # [P, 1, Hkv, hd] -> [P, B, Hkv, hd]
    run(t.decoder, DECODE, m.graphs.decoder, feed)
    return Report(str(engine_dir), str(image), prompt, p, tuple(rows), tuple(tokens))


# ----------------------------------------------------------------------------- the folder and the runners


def load_checked(engine_dir: Path) -> Manifest:
    """The manifest, with plans built from the folder's current graphs (else a change would read as a TensorRT bug)."""
    m = load_manifest(engine_dir)
    if m.trt is None:
        raise EngineError(f"{engine_dir}/manifest.json has no TensorRT plans (no `trt` record); build the plans "
                          f"first with `python -m export.trt --engine {engine_dir}`")
    verify_files(engine_dir, m.files)
    check_graph_records(engine_dir, m)
    t = m.trt  # as if on the build machine, so only the stale-graph rule can object
    stale = plan_mismatch(engine_dir, m, t.tensorrt_version, t.gpu_name, t.compute_capability)
    if stale:
        raise EngineError(stale)
    return m


def default_image() -> Path:
    found = sorted(p for p in DEFAULT_IMAGES.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not found:
        raise ImageError(f"{DEFAULT_IMAGES}: no image files ({', '.join(IMAGE_EXTS)}); pass one with --image FILE")
    return found[0]


def onnx_runners(engine_dir: Path) -> OnnxRunnerFor:
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    def runner_for(plan: PlanSpec):
        return OnnxrtRunner(SessionFromOnnx(str(engine_dir / plan.onnx), providers=["CPUExecutionProvider"]),
                            name="onnxruntime")
    return runner_for


def tensorrt_runners(engine_dir: Path, m: Manifest) -> TrtRunnerFor:
    """Runners of the folder's plans; raises if tensorrt is missing or the plans were built for another one."""
    t = m.trt
    version = trt_compat.version_string(trt_compat.import_tensorrt())
    mismatch = plan_mismatch(engine_dir, m, version, t.gpu_name, t.compute_capability)  # the GPU: at deserialization
    if mismatch:
        raise EngineError(mismatch)
    for plan in (t.vision, t.decoder):
        path = engine_dir / plan.file
        if not path.is_file() or path.stat().st_size != plan.bytes:
            raise EngineError(f"{path}: missing, or not the {plan.bytes}-byte plan manifest.json records; "
                              f"{rebuild_hint(engine_dir)}")
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    def runner_for(plan: PlanSpec, profile: int):
        return TrtRunner(EngineFromBytes(BytesFromPath(str(engine_dir / plan.file))), optimization_profile=profile,
                         name="tensorrt")
    return runner_for


# ----------------------------------------------------------------------------- CLI


def table(r: Report) -> str:
    lines = [f"{r.engine}: TensorRT plans against their ONNX graphs on ONNX Runtime (CPU); image {r.image}, "
             f"prompt {r.prompt!r} ({r.prompt_tokens} tokens)",
             "| plan | profile | output | max abs diff | max rel diff | tolerance (abs / rel) | result |",
             "|---|---|---|---|---|---|---|"]
    for o in r.outputs:
        lines.append(f"| {o.plan} | {o.profile} | {o.output} | {o.max_abs:.2e} | {o.max_rel:.2e} | "
                     f"{o.atol:g} / {o.rtol:g} | {'pass' if o.passed else 'FAIL'} |")
        for n in (n for n in r.next_tokens if o.output == io.LOGITS and (n.plan, n.profile) == (o.plan, o.profile)):
            lines.append(f"| {n.plan} | {n.profile} | next token (argmax) | onnx {n.onnx} | tensorrt {n.tensorrt} | | "
                         f"{'agree' if n.onnx == n.tensorrt else 'differ'} |")
    bad = [o for o in r.outputs if not o.passed]
    if not bad:
        lines.append(f"all {len(r.outputs)} outputs within tolerance: the plans compute what their ONNX graphs "
                     f"compute; if the answers are wrong, look at the export (the ONNX graphs against PyTorch)")
    else:
        lines.append(f"{len(bad)} of {len(r.outputs)} outputs diverge, first {bad[0].plan} profile {bad[0].profile} "
                     f"{bad[0].output}: TensorRT computes something else than the ONNX graph the plan was built from, "
                     f"so the plan is miscompiled, not the export")
    return "\n".join(lines)


def main(argv=None, trt_runner_for: TrtRunnerFor | None = None) -> int:
    """trt_runner_for: a stand-in for the TensorRT side (tests run ONNX Runtime there); None: the plans."""
    ap = CliParser(prog="python -m export.trt check", description=__doc__)
    ap.add_argument("--engine", required=True, type=Path, help="engine folder with TensorRT plans")
    ap.add_argument("--image", type=Path, help="default: the first image of calib/images")
    ap.add_argument("--prompt", default="Describe the image.")
    ap.add_argument("--atol", type=float, help="absolute tolerance for every output (default: by precision)")
    ap.add_argument("--rtol", type=float, help="relative tolerance for every output (default: by precision)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    args = ap.parse_args(argv)
    for flag, value in (("--atol", args.atol), ("--rtol", args.rtol)):
        if value is not None and not value >= 0:
            ap.error(f"{flag} must be a number >= 0, got {value}")
    try:
        manifest = load_checked(args.engine)
        image = args.image or default_image()
        if not image.is_file():
            raise ImageError(f"--image {image}: file not found, expected an image file; check the path")
        trt_for = trt_runner_for or tensorrt_runners(args.engine, manifest)
        report = check(args.engine, manifest, image, args.prompt, onnx_runners(args.engine), trt_for, args.atol,
                       args.rtol)
    except FlashVLError as e:
        print(error_line(e), file=sys.stderr)
        return 2
    print(json.dumps(dict(asdict(report), passed=report.passed), indent=1) if args.json else table(report))
    return 0 if report.passed else 1
