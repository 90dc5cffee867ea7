"""`python -m calib.drift`: where, tensor by tensor, a reduced-precision graph leaves its fp32 twin.

    python -m calib.drift --engine engines/tiny-int8 --against engines/tiny --graph vision --image x.png
    python -m calib.drift --engine engines/tiny-fp16 --against engines/tiny --graph decoder --image x.png

Polygraphy does the work: `ModifyOutputs(mark all)` makes every intermediate tensor an output and
`OnnxrtRunner` runs each graph on ONNX Runtime (CPU) with the same real input: the image through
the runtime's preprocessing (vision), or that image's fp32 embeddings spliced into the prompt
(decoder, prefill with an empty cache).  Tensors that keep their name in both graphs (the QDQ and
FP16 passes keep the fp32 graph's names) are compared in the fp32 graph's order; the table lists
the first tensors whose cosine drops below 1 - tol, and the worst ones.  The inputs are saved in
Polygraphy's JSON format, so the same comparison runs from its CLI:

    polygraphy run FP32.onnx --onnxrt --onnx-outputs mark all --load-inputs inputs.json --save-outputs ref.json
    polygraphy run REDUCED.onnx --onnxrt --onnx-outputs mark all --load-inputs inputs.json --load-outputs ref.json

Graphs over 2 GB (full-size decoders) cannot be re-serialized with every tensor marked; use the
tiny or a medium preset to localize drift, then `calib.report` for the full-size figures.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calib.report import check_same_model
from runtime import graph_io as io
from runtime.api import FlashVL, vision_pixels
from runtime.cli_output import error_line
from runtime.cli_parser import CliParser
from runtime.errors import FlashVLError
from runtime.files import verify_files
from runtime.image import load_image
from runtime.manifest import Manifest, load_manifest


@dataclass(frozen=True)
class TensorDrift:
    name: str
    node: str  # the fp32 graph's producer
    cosine: float
    rel_max: float  # max |a - b| / max |a|


def graph_feed(manifest: Manifest, ref: FlashVL, graph: str, image: Path, prompt: str) -> dict[str, np.ndarray]:
    """A real input for `graph`, in the dtypes of `manifest`'s graph (the runtime's own feeds)."""
    rgb = load_image(str(image), channels="rgb", background=ref.manifest.preprocess.alpha_background)
    if graph == "vision":
        pixels, _ = vision_pixels(rgb, ref.manifest)  # [tiles, 3, S, S]
        return {io.PIXEL_VALUES: pixels}
    embeds, _ = ref.encode_image(rgb, channels="rgb")  # [1, N, D]
    ids = ref.tokenizer.encode_prompt(prompt, image_tokens=embeds.shape[1], system=None)  # [P]
    spec = manifest.graphs.decoder
    d = manifest.decoder
    feed = {io.INPUTS_EMBEDS: ref.embed.prompt(ids, embeds), io.POSITION_IDS: np.arange(len(ids))[None]}
    for i in range(d.n_layers):
        for name in (io.past_key(i), io.past_value(i)):
            feed[name] = np.zeros((0, 1, d.n_kv_heads, d.head_dim), spec.input(name).dtype)
    return feed


def run_all_tensors(path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from polygraphy import constants
    from polygraphy.backend.onnx import BytesFromOnnx, ModifyOutputs, OnnxFromPath
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    marked = ModifyOutputs(OnnxFromPath(str(path)), outputs=constants.MARK_ALL)
    with OnnxrtRunner(SessionFromOnnx(BytesFromOnnx(marked), providers=["CPUExecutionProvider"])) as runner:
        return dict(runner.infer(feed))


def compare_tensors(order: list[tuple[str, str]], ref: dict, got: dict) -> list[TensorDrift]:
    out = []
    for name, node in order:
        a, b = ref.get(name), got.get(name)
        if a is None or b is None or a.shape != b.shape or not np.issubdtype(a.dtype, np.floating):
            continue
        a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
        denom = np.linalg.norm(a64) * np.linalg.norm(b64)
        cos = float(a64 @ b64 / denom) if denom > 0 else float(np.array_equal(a64, b64))
        scale = float(np.abs(a64).max(initial=0.0))
        out.append(TensorDrift(name, node, cos, float(np.abs(a64 - b64).max(initial=0.0)) / scale if scale else 0.0))
    return out


def drift(engine: Path, against: Path, graph: str, image: Path, prompt: str,
          save_inputs: Path | None) -> list[TensorDrift]:
    import onnx
    from polygraphy.json import save_json

    manifest, ref = load_manifest(engine), FlashVL.load(against)  # only the fp32 side runs through the runtime
    verify_files(engine, manifest.files)
    check_same_model(manifest, ref.manifest, engine, against)
    fused = [str(e) for e, m in ((engine, manifest), (against, ref.manifest)) if m.graphs.decoder.kv_cache != "seq_major"]
    if graph == "decoder" and fused:
        raise FlashVLError(f"{fused[0]}: the fused onnxruntime-flavour decoder has no tensor-by-tensor counterpart in "
                           f"the traced graph; compare it with `python -m calib.report`, or drift a standard-flavour "
                           f"export")
    feed = graph_feed(manifest, ref, graph, image, prompt)
    if save_inputs is not None:
        save_json([feed], str(save_inputs), description="calib.drift inputs")
    spec_new, spec_ref = getattr(manifest.graphs, graph), getattr(ref.manifest.graphs, graph)
    ref_path, new_path = against / spec_ref.file, engine / spec_new.file
    ref_feed = {k: (v.astype(spec_ref.input(k).dtype) if v.dtype.kind == "f" else v) for k, v in feed.items()}
    order = [(o, n.name) for n in onnx.load(str(ref_path), load_external_data=False).graph.node for o in n.output]
    return compare_tensors(order, run_all_tensors(ref_path, ref_feed), run_all_tensors(new_path, feed))


def table(rows: list[TensorDrift], tol: float, top: int) -> str:
    first = [r for r in rows if r.cosine < 1 - tol][:top]
    worst = sorted(rows, key=lambda r: r.cosine)[:top]
    lines = [f"{len(rows)} tensors compared; {sum(r.cosine < 1 - tol for r in rows)} below cosine {1 - tol:g}"]
    for title, part in ((f"first {len(first)} below cosine {1 - tol:g}", first), (f"worst {len(worst)}", worst)):
        lines += ["", title, "| tensor | fp32 node | cosine | max rel diff |", "|---|---|---|---|"]
        lines += [f"| {r.name} | {r.node} | {r.cosine:.6f} | {r.rel_max:.2e} |" for r in part]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = CliParser(prog="python -m calib.drift", description=__doc__)
    ap.add_argument("--engine", required=True, type=Path, help="the reduced-precision engine folder")
    ap.add_argument("--against", required=True, type=Path, help="the fp32 engine folder of the same model")
    ap.add_argument("--graph", choices=("vision", "decoder"), required=True)
    ap.add_argument("--image", required=True, type=Path)
    ap.add_argument("--prompt", default="Describe the image.")
    ap.add_argument("--tol", type=float, default=1e-4, help="list tensors with cosine below 1 - tol")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--save-inputs", type=Path, help="write the feed as Polygraphy JSON (--load-inputs)")
    args = ap.parse_args(argv)
    try:
        rows = drift(args.engine, args.against, args.graph, args.image, args.prompt, args.save_inputs)
    except FlashVLError as e:
        print(error_line(e), file=sys.stderr)
        return 2
    print(table(rows, args.tol, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
