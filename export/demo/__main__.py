"""`python -m export.demo`: train the demo model, draw sample scenes, measure an engine's accuracy.

    python -m export.demo train --out DIR [--seed 0] [--steps 3700] [--threads 2]
    python -m export --preset demo --checkpoint DIR --out engines/demo
    python -m export.demo eval --engine engines/demo [--scenes 200] [--video]
    python -m export.demo samples --out DIR [--n 3] [--seed 2000003] [--video]

train    a Flash-VL-architecture model (SigLIP-style ViT -> pixel shuffle -> Qwen2-style decoder,
         ~1M parameters) on synthetic scenes, on the CPU; writes a Hugging Face-style checkpoint
         (model.safetensors, config.json with the training record, tokenizer.json).
eval     exact-match caption and question accuracy on held-out scenes, through the runtime
         (ONNX Runtime or TensorRT, never PyTorch); --video also captions a generated video
         in the camera loop.
samples  scene_N.png and scenes.json (each image's true caption and answers); --video also
         scenes.mp4 (the held-out video `eval --video` captions) and scenes_video.json (each
         frame's true caption).
"""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
from pathlib import Path

from runtime.cli_parser import CliParser
from runtime.errors import FlashVLError


def main(argv=None) -> int:
    ap = CliParser(prog="python -m export.demo", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the demo model and write a checkpoint")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--steps", type=int, help="optimizer steps (default: export.demo.train.TrainConfig's)")
    t.add_argument("--batch", type=int, help="images per step")
    t.add_argument("--pool", type=int, help="distinct training scenes")
    t.add_argument("--vision-frozen-steps", type=int, help="steps before the vision tower trains")
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--eval-scenes", type=int, help="held-out scenes for the PyTorch check at the end")
    e = sub.add_parser("eval", help="held-out accuracy of an engine folder, through the runtime")
    e.add_argument("--engine", type=Path, required=True)
    e.add_argument("--scenes", type=int, default=200)
    e.add_argument("--video", action="store_true", help="also caption a generated video in the camera loop")
    e.add_argument("--backend", choices=("auto", "trt", "onnxruntime"), default="auto")
    e.add_argument("--threads", type=int)
    e.add_argument("--json", action="store_true")
    s = sub.add_parser("samples", help="write sample scenes and their truth")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--n", type=int, default=3)
    s.add_argument("--seed", type=int, help="default: the seed of samples/ (scenes.SAMPLES_SEED)")
    s.add_argument("--video", action="store_true", help="also scenes.mp4 and scenes_video.json")
    args = ap.parse_args(argv)
    for name in ("scenes", "n"):  # train's settings are checked by TrainConfig
        if getattr(args, name, 1) < 1:
            ap.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.cmd == "samples" and args.seed is not None and args.seed < 0:
        ap.error(f"--seed must be 0 or more, got {args.seed}")
    try:
        if args.cmd == "train":
            return _train(args, argv)
        if args.cmd == "eval":
            return _eval(args)
        return _samples(args)
    except FlashVLError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        where = err.filename or getattr(args, "out", None) or args.engine
        print(f"error: {where}: {err.strerror or err}; check the path, its permissions and free space", file=sys.stderr)
        return 2


def _train(args, argv) -> int:
    from export.demo.train import TrainConfig, train  # torch: only here

    settings = ("steps", "batch", "pool", "vision_frozen_steps", "eval_scenes")
    given = {k: getattr(args, k) for k in settings if getattr(args, k) is not None}  # else TrainConfig's defaults
    cfg = TrainConfig(out=args.out, seed=args.seed, threads=args.threads, **given)
    command = "python -m export.demo " + shlex.join(sys.argv[1:] if argv is None else argv)
    record = train(cfg, command)
    print(json.dumps(record["held_out_pytorch"]))
    return 0


def _eval(args) -> int:
    from export.demo import accuracy, video
    from runtime.api import FlashVL

    with FlashVL.load(args.engine, threads=args.threads, backend=args.backend) as vl:
        still = accuracy.evaluate(vl, args.scenes)
        report = {"engine": str(args.engine), "backend": vl.backend.name, "scenes": args.scenes,
                  "caption": still.caption, "questions": still.questions, "n_questions": still.n_questions}
        if args.video:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "scenes.mp4"
                truth = video.write_scene_video(path)
                moving = accuracy.evaluate_video(vl, path, truth)
            report.update(video_caption=moving.caption, video_frames=moving.frames)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{args.engine} ({report['backend']}), {args.scenes} held-out scenes: {still.line()}")
    if args.video:
        print(f"camera loop: {moving.line()}")
    for miss in still.misses[:5]:
        print(f"  miss: {miss.prompt!r}: expected {miss.expected!r}, got {miss.got!r}")
    return 0


def _samples(args) -> int:
    import cv2

    from export.demo import scenes

    args.out.mkdir(parents=True, exist_ok=True)
    truth = {}
    seed = scenes.SAMPLES_SEED if args.seed is None else args.seed
    for i, case in enumerate(scenes.held_out(args.n, seed=seed), start=1):
        name = f"scene_{i}.png"
        if not cv2.imwrite(str(args.out / name), case.image):
            raise FlashVLError(f"{args.out / name}: OpenCV could not write the PNG")
        truth[name] = {"caption": case.caption, "questions": dict(scenes.questions(case.scene))}
    (args.out / "scenes.json").write_text(json.dumps(truth, indent=1) + "\n")
    print(f"wrote {args.n} scenes and scenes.json to {args.out}")
    if args.video:
        from export.demo import video

        frames = video.write_scene_video(args.out / "scenes.mp4")
        record = {"video": "scenes.mp4", "fps": video.FPS, "size": list(video.SIZE), "seed": video.SEED,
                  "frame_captions": frames}
        (args.out / "scenes_video.json").write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote scenes.mp4 ({len(frames)} frames at {video.FPS} fps) and scenes_video.json to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
