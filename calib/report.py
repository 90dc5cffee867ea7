"""`python -m calib.report`: how far a reduced-precision engine folder drifts from its fp32 twin.

    python -m calib.report --engine engines/tiny-int8 --against engines/tiny --images samples

Both folders must hold the same model (same weights source).  Per graph:

    vision    cosine similarity of the image embeddings, per token, over the images
    decoder   teacher-forced on the fp32 engine's greedy continuation, both decoders fed the fp32
              image embeddings (so this row is the decoder's own drift): top-1 agreement of the
              next-token distributions and KL(p_fp32 || p_engine), over every position
    end to end  each engine with its own vision graph, greedy: exact-match rate of the generated
              ids, and the mean length of the common prefix

Images × prompts: every image with every prompt of PROMPTS (the first --prompts of them).
Random-weight models only show numerical drift, never task accuracy.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from calib.sources import SourceReport, count_images, iter_images
from export import progress
from runtime.api import FlashVL
from runtime.cli_output import error_line
from runtime.cli_parser import CliParser
from runtime.errors import FlashVLError
from runtime.manifest import Manifest
from runtime.sampling import SamplingConfig

PROMPTS = ("Describe the image.", "What is in the picture?", "List the colours you see.",
           "Is there any text? Read it.", "Where is the largest object?", "Count the shapes.")


@dataclass
class Report:
    engine: str
    against: str
    precision: dict  # graph -> precision (flavour)
    images: int
    prompts: int
    vision_cos_mean: float
    vision_cos_min: float
    top1_agreement: float  # over teacher-forced positions
    kl_mean: float
    kl_max: float
    positions: int
    exact_match: float  # greedy sequences identical
    first_token: float  # greedy first tokens identical
    common_prefix_mean: float  # tokens
    new_tokens: int


def log_softmax(logits: np.ndarray) -> np.ndarray:
    # [V] f32 -> [V] f64
    x = logits.astype(np.float64)
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def kl(ref_logits: np.ndarray, logits: np.ndarray) -> float:
    """KL(p_ref || p) in nats, from two [V] logit vectors."""
    lp, lq = log_softmax(ref_logits), log_softmax(logits)
    return float(np.sum(np.exp(lp) * (lp - lq)))


def cosine_per_token(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # [N, D], [N, D] -> [N]
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)


def teacher_forced(vl: FlashVL, ids: np.ndarray, embeds: np.ndarray, continuation: list[int]) -> list[np.ndarray]:
    """Logits [V] after the prompt and after each continuation token but the last (its own decoder)."""
    out = [vl.decoder.forward(vl.embed.prompt(ids, embeds), 0)[0].copy()]  # [1, P, D] -> [V]
    pos = len(ids)
    for token in continuation[:-1]:
        out.append(vl.decoder.forward(vl.embed.tokens(np.array([token])), pos)[0].copy())  # [1, 1, D] -> [V]
        pos += 1
    return out


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def check_same_model(a: Manifest, b: Manifest, engine: Path, against: Path) -> None:
    """Drift is only meaningful between exports of the same architecture and weights."""
    if a.source != b.source or a.preset != b.preset:
        raise FlashVLError(f"{engine} and {against} hold different models (preset/weights source differ); "
                           f"compare a reduced-precision folder with the fp32 export of the same weights")


def compare(engine: Path, against: Path, images: Path, max_images: int | None, n_prompts: int,
            new_tokens: int, threads: int | None) -> Report:
    vl, ref = FlashVL.load(engine, threads=threads), FlashVL.load(against, threads=threads)
    check_same_model(vl.manifest, ref.manifest, engine, against)
    greedy = SamplingConfig(temperature=0.0)
    prompts = PROMPTS[:n_prompts]
    cos, tf_top1, kls, matches, prefixes, firsts = [], [], [], [], [], []
    report = SourceReport(used=0, skipped=[])
    total = count_images(images, max_images) * len(prompts)
    with progress.Bar("comparing", total=total) as bar:
        for image in iter_images(images, max_images, report):
            e_ref, _ = ref.encode_image(image.rgb, channels="rgb")  # [1, N, D]
            e_new, _ = vl.encode_image(image.rgb, channels="rgb")
            cos.append(cosine_per_token(e_ref[0], e_new[0]))
            for prompt in prompts:
                r = ref.generate(image.rgb, prompt, channels="rgb", max_new_tokens=new_tokens, sampling=greedy)
                g = vl.generate(image.rgb, prompt, channels="rgb", max_new_tokens=new_tokens, sampling=greedy)
                matches.append(r.token_ids == g.token_ids)
                prefixes.append(common_prefix(r.token_ids, g.token_ids))
                firsts.append(r.token_ids[:1] == g.token_ids[:1])
                ids = ref.tokenizer.encode_prompt(prompt, image_tokens=e_ref.shape[1], system=None)
                cont = r.token_ids + ([] if r.finish_reason == "length" else [ref.manifest.tokens.stop_ids[0]])
                for lr, ln in zip(teacher_forced(ref, ids, e_ref, cont), teacher_forced(vl, ids, e_ref, cont)):
                    tf_top1.append(int(lr.argmax()) == int(ln.argmax()))
                    kls.append(kl(lr, ln))
                bar.advance()
    c = np.concatenate(cos)
    g = vl.manifest.graphs
    return Report(engine=str(engine), against=str(against),
                  precision={"vision": f"{g.vision.precision} ({g.vision.flavour})",
                             "decoder": f"{g.decoder.precision} ({g.decoder.flavour}"
                                        + (", fp16 activations)" if g.decoder.weights and
                                           g.decoder.weights.compute == "fp16" else ")")},
                  images=report.used, prompts=len(prompts), vision_cos_mean=float(c.mean()),
                  vision_cos_min=float(c.min()), top1_agreement=float(np.mean(tf_top1)), kl_mean=float(np.mean(kls)),
                  kl_max=float(np.max(kls)), positions=len(kls), exact_match=float(np.mean(matches)),
                  first_token=float(np.mean(firsts)),
                  common_prefix_mean=float(np.mean(prefixes)), new_tokens=new_tokens)


def table(r: Report) -> str:
    n = r.images * r.prompts
    return "\n".join([
        f"{r.engine} against {r.against}: {r.images} images x {r.prompts} prompts, {r.new_tokens} new tokens",
        "| graph | precision | metric | value |",
        "|---|---|---|---|",
        f"| vision | {r.precision['vision']} | image-embedding cosine, mean / min over tokens | "
        f"{r.vision_cos_mean:.5f} / {r.vision_cos_min:.5f} |",
        f"| decoder | {r.precision['decoder']} | next-token top-1 agreement ({r.positions} positions) | "
        f"{100 * r.top1_agreement:.1f}% |",
        f"| decoder | {r.precision['decoder']} | KL(fp32 ‖ engine), mean / max, nats | "
        f"{r.kl_mean:.2e} / {r.kl_max:.2e} |",
        f"| end to end | both | greedy exact match ({n} generations) | {100 * r.exact_match:.1f}% "
        f"(common prefix {r.common_prefix_mean:.1f} tokens) |",
        f"| end to end | both | greedy first token equal | {100 * r.first_token:.1f}% |",
    ])


def main(argv=None) -> int:
    ap = CliParser(prog="python -m calib.report", description=__doc__)
    ap.add_argument("--engine", required=True, type=Path, help="the reduced-precision engine folder")
    ap.add_argument("--against", required=True, type=Path, help="the fp32 engine folder of the same model")
    ap.add_argument("--images", required=True, type=Path, help="folder of images, one image, or a video")
    ap.add_argument("--max", type=int, dest="max_images", help="at most this many images (or video frames)")
    ap.add_argument("--prompts", type=int, default=3, choices=range(1, len(PROMPTS) + 1), metavar=f"1..{len(PROMPTS)}")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    args = ap.parse_args(argv)
    if args.new_tokens < 1:
        ap.error(f"--new-tokens must be at least 1, got {args.new_tokens}")
    try:
        r = compare(args.engine, args.against, args.images, args.max_images, args.prompts, args.new_tokens,
                    args.threads)
    except FlashVLError as e:
        print(error_line(e), file=sys.stderr)
        return 2
    print(json.dumps(asdict(r), indent=1) if args.json else table(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
