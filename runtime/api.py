"""Python API for embedded apps.

    from runtime import FlashVL, SamplingConfig
    vl = FlashVL.load("engines/tiny")                     # checks manifest, hashes, graphs
    for piece in vl.stream("cat.jpg", "Describe the image."):
        print(piece, end="", flush=True)
    result = vl.generate(frame_bgr, "What is here?")      # NumPy frames are BGR unless channels="rgb"
    result.text, result.token_ids, result.timings.ttft_ms

An image is a path, encoded bytes (PNG/JPEG/...), a NumPy array (H x W x 3 BGR by
default, as OpenCV cameras give; `channels="rgb"` for RGB; gray, BGRA/RGBA and 16-bit
work), an EncodedImage (prepare_image + encode_prepared, done ahead), or None for a
text-only prompt.  `captions()` runs the camera/video loop (runtime.video).

One FlashVL serves any number of threads at once: every request becomes a sequence of its engine
loop (runtime.engine), which batches the sequences in flight into each decoder step (continuous
batching, up to `max_batch`; more wait in a queue of `max_queue`, and past that a request raises
QueueFull).  Images of concurrent requests share vision calls.  Each FlashVL has its own loop.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from runtime.arguments import check_bool, check_choice, check_int, check_request, check_threads, check_utf8_path
from runtime.backend import ORT_CPU, TRT_GPU, check_supported
from runtime.backend_select import TENSORRT, BackendChoice, choose_backend
from runtime.chat import ChatTokenizer
from runtime.embedding import TokenEmbedding
from runtime.engine_check import check_graph_records
from runtime.errors import Cancelled, FlashVLError
from runtime.files import verify_files
from runtime.engine import Done, Engine, Sequence, VisionBatcher
from runtime.generate import Timings, check_prompt_fits
from runtime.image import CHANNEL_ORDERS, DEFAULT_MAX_PIXELS, load_image
from runtime.image_header import MAX_PIXELS_CEILING
from runtime.manifest import MAX_BATCH, Manifest, load_manifest
from runtime.ort_backend import OrtDecoder, OrtVision
from runtime.preprocess import preprocess
from runtime.sampling import Sampler, SamplingConfig
from runtime.tiling import TileLayout, gather_tokens, plan, tile_pixels
from runtime.video.captioner import Cadence, CaptionStream
from runtime.video.model import PromptConfig
from runtime.video.streams import CaptionStreams, open_captions

log = logging.getLogger(__name__)

DEFAULT_MAX_QUEUE = 64  # requests that may wait for a cache slot; more raise QueueFull
MAX_QUEUE = 1 << 16
DEFAULT_PREFILL_CHUNK = 64  # prompt rows per call while others decode (docs/performance.md: measured)


@dataclass(frozen=True)
class Result:
    text: str
    token_ids: list[int]  # generated ids, the stop token excluded
    prompt_tokens: int
    image_tokens: int
    finish_reason: str  # "stop" | "length"
    timings: Timings
    tiling: dict | None = None  # dynamic models: grid, tiles, ISS margin, image tokens vs plain cropping

    def as_dict(self) -> dict:
        return {"text": self.text, "token_ids": self.token_ids, "image_tokens": self.image_tokens,
                "prompt_tokens": self.prompt_tokens, "finish_reason": self.finish_reason,
                "timings": self.timings.as_dict(), "tiling": self.tiling}


@dataclass(frozen=True)
class PreparedImage:
    """An image ready for the vision graph (FlashVL.prepare_image)."""

    pixels: np.ndarray  # [tiles, 3, S, S] f32 (1 tile for a static model)
    layout: TileLayout | None
    preprocess_ms: float


@dataclass(frozen=True)
class EncodedImage:
    """An image through the vision graph (FlashVL.encode_prepared); stream()/generate() take it as the image."""

    embeds: np.ndarray  # [1, image_tokens, dim] f32
    layout: TileLayout | None
    preprocess_ms: float
    vision_ms: float


class _RequestState:
    """What a request's generator and its Generation share (the generator holds this, not the Generation, so
    dropping an unfinished Generation frees the generator at once and its `finally` cancels the request)."""

    def __init__(self):
        self.result: Result | None = None
        self.cancelled = False
        self.cancel_fn = None  # set once the request is on its way to the engine


class Generation:
    """An iterator of text pieces; `.result` is set once it is exhausted.  `cancel()` (any thread) ends the
    request at the engine's next step: the iterator then raises runtime.errors.Cancelled.  Dropping an
    unfinished Generation (or closing it) cancels it too.  One thread reads a Generation at a time."""

    def __init__(self, state: _RequestState, pieces: Iterator[str]):
        self._state, self._pieces = state, pieces
        self._reading = threading.Lock()

    @property
    def result(self) -> Result | None:
        return self._state.result

    @property
    def cancelled(self) -> bool:
        return self._state.cancelled

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if not self._reading.acquire(blocking=False):
            raise FlashVLError("this Generation is being read by another thread; read each stream() from one "
                               "thread (start one stream() per thread)")
        try:
            return next(self._pieces)
        finally:
            self._reading.release()

    def cancel(self) -> None:
        self._state.cancelled = True  # before the first piece: the request never starts
        if self._state.cancel_fn is not None:
            self._state.cancel_fn()

    def close(self) -> None:
        """Stop reading: cancel the request if it is still running (a reader on another thread then sees
        Cancelled)."""
        self.cancel()
        if self._reading.acquire(blocking=False):
            try:
                self._pieces.close()
            finally:
                self._reading.release()


def vision_pixels(rgb: np.ndarray, manifest: Manifest, iss: bool = True) -> tuple[np.ndarray, TileLayout | None]:
    """RGB uint8 [H, W, 3] -> the vision graph's input [tiles, 3, S, S] f32 (1 tile for a static model)."""
    if manifest.tiling is None:
        return preprocess(rgb, manifest.preprocess), None  # [1, 3, S, S]
    layout = plan(rgb.shape[1], rgb.shape[0], manifest.tiling, iss=iss)
    return tile_pixels(rgb, layout, manifest.preprocess), layout  # [tiles, 3, S, S]


class FlashVL:
    def __init__(self, engine_dir: Path, manifest: Manifest, vision, decoder, embed: TokenEmbedding,
                 tokenizer: ChatTokenizer, backend: BackendChoice, owner=None,
                 max_image_pixels: int = DEFAULT_MAX_PIXELS, exif_orientation: bool = True,
                 max_batch: int | None = None, max_queue: int = DEFAULT_MAX_QUEUE,
                 prefill_chunk: int = DEFAULT_PREFILL_CHUNK, vision_batch: int | None = None):
        self.max_image_pixels = max_image_pixels  # images above it are refused before decoding
        self.exif_orientation = exif_orientation  # files and bytes are turned upright as their EXIF says
        self.engine_dir = engine_dir
        self.manifest = manifest
        self.vision = vision
        self.decoder = decoder
        self.embed = embed
        self.tokenizer = tokenizer
        self.backend = backend  # which backend runs the graphs, and why
        self._owner = owner  # what holds device memory (TensorRT), released by close()
        self.max_batch = min(max_batch or decoder.max_batch, decoder.max_batch)
        self.engine = Engine(decoder, embed, self.max_batch, max_queue, prefill_chunk,
                             owner.cuda.enter_thread if owner is not None else None,
                             owner.cuda.leave_thread if owner is not None else None)
        # images per vision call: every concurrent one on TensorRT (its vision runs on the engine thread,
        # between decode steps); one on a CPU, where a batch of images is no faster (docs/performance.md)
        on_gpu = backend.name == TENSORRT
        self.vision_batcher = VisionBatcher(_OnEngineThread(self.engine, vision) if on_gpu else vision,
                                            vision_batch or (self.max_batch if on_gpu else 1))
        self._finalizer = weakref.finalize(self, self.engine.close)  # a dropped FlashVL stops its loop

    def close(self) -> None:
        """Stop the engine loop (requests in flight end with Cancelled) and release device memory (TensorRT)."""
        self._finalizer()
        if self.engine.alive:  # a call that would not stop: its device memory must outlive it
            log.warning("the engine loop did not stop within its timeout; leaving its device memory allocated")
            return
        if self._owner is not None:
            self._owner.close()
            self._owner = None

    def __enter__(self) -> FlashVL:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @classmethod
    def load(cls, engine_dir: str | Path, threads: int | None = None, max_seq_len: int | None = None,
             backend: str = "auto", cuda_graphs: bool = True, spinning: bool = True,
             max_image_pixels: int = DEFAULT_MAX_PIXELS, exif_orientation: bool = True,
             max_batch: int | None = None, max_queue: int = DEFAULT_MAX_QUEUE,
             prefill_chunk: int = DEFAULT_PREFILL_CHUNK, vision_batch: int | None = None) -> FlashVL:
        """Open an engine folder; raise FlashVLError (one line, with the fix) if anything is off.

        backend: "auto" (TensorRT when the folder's plans fit this machine, else ONNX Runtime),
        "trt" or "onnxruntime"; the choice and its reason are in `.backend`.
        spinning: ONNX Runtime's idle threads spin (fastest for one request at a time); pass False for
        captions() over a camera, where a capture thread shares the cores.
        max_image_pixels: images (and frames) of more pixels (width x height) are refused, from the file's
        header before decoding; exif_orientation=False keeps files' pixels as stored (docs/python-api.md).
        max_batch: sequences decoded together (default: what the folder's decoder records, 8 for new exports,
        1 for folders exported before batching); max_queue: requests that may wait beyond them (more raise
        QueueFull); prefill_chunk: prompt rows written per call while other sequences decode (0: whole
        prompts); vision_batch: images per vision call (default: 1 on a CPU, max_batch on TensorRT).
        """
        if not isinstance(engine_dir, (str, os.PathLike)):
            raise FlashVLError(f"engine_dir must be a path (str or pathlib.Path), got {type(engine_dir).__name__}")
        threads = check_threads(threads)
        check_int("max_image_pixels", max_image_pixels, 1, MAX_PIXELS_CEILING,
                  "the ceiling is OpenCV's own decode limit")
        check_bool("exif_orientation", exif_orientation)
        if max_batch is not None:
            check_int("max_batch", max_batch, 1, MAX_BATCH, "sequences decoded together")
        check_int("max_queue", max_queue, 0, MAX_QUEUE, "requests waiting beyond max_batch")
        check_int("prefill_chunk", prefill_chunk, 0, 1 << 20, "0 writes each prompt in one call")
        if vision_batch is not None:
            check_int("vision_batch", vision_batch, 1, MAX_BATCH, "images per vision call")
        for name, flag in (("cuda_graphs", cuda_graphs), ("spinning", spinning)):
            check_bool(name, flag)
        check_utf8_path("engine folder", engine_dir, "ONNX Runtime and tokenizers")
        engine_dir = Path(engine_dir)
        manifest = load_manifest(engine_dir)
        if max_seq_len is not None:
            check_int("max_seq_len", max_seq_len, 2, manifest.decoder.max_seq_len,
                      f"{engine_dir} was exported for a context window of {manifest.decoder.max_seq_len}; re-export "
                      f"with --max-seq-len for a larger one")
        exported = manifest.graphs.decoder.max_batch
        if max_batch is not None and max_batch > exported:
            raise FlashVLError(f"max_batch {max_batch} is above {exported}, the sequences {engine_dir}'s decoder was "
                               f"exported to carry per call; ask for at most {exported}, or re-export with "
                               f"`python -m export ... --max-batch {max_batch}`")
        choice, cuda = choose_backend(backend, engine_dir, manifest)
        log.info("%s", choice.line())
        g = manifest.graphs
        caps = TRT_GPU if choice.name == TENSORRT else ORT_CPU
        owner = None
        try:
            # one hash check of what this backend reads (its stamps are kept beside the other backend's)
            verify_files(engine_dir, manifest.files + (manifest.trt.plan_files() if choice.name == TENSORRT else ()))
            check_graph_records(engine_dir, manifest)  # the graphs were exported with these numbers
            for role, spec in (("vision", g.vision), ("decoder", g.decoder)):
                check_supported(caps, role, spec, engine_dir)
            tokenizer = ChatTokenizer.load(engine_dir / manifest.tokenizer, manifest.tokens, manifest.chat,
                                            manifest.decoder.vocab_size)
            if choice.name == TENSORRT:
                from runtime.trt_backend import TrtEngines

                owner = TrtEngines(engine_dir, manifest, cuda, max_seq_len, cuda_graphs, max_batch)
                vision, decoder = owner.vision, owner.decoder
            else:
                vision = OrtVision(engine_dir / g.vision.file, g.vision, threads, spinning)
                decoder = OrtDecoder(engine_dir / g.decoder.file, g.decoder, manifest.decoder, threads, max_seq_len, max_batch,
                                     spinning=spinning)
        except BaseException:
            held = owner or cuda  # device memory taken before the failure
            if held is not None:
                held.close()
            raise
        embed = TokenEmbedding(engine_dir / manifest.embeddings.file, manifest.embeddings, manifest.tokens.image_pad_id)
        log.info("loaded %s (%s) from %s", manifest.model, manifest.preset, engine_dir)
        return cls(engine_dir, manifest, vision, decoder, embed, tokenizer, choice, owner, int(max_image_pixels),
                   exif_orientation, max_batch, max_queue, prefill_chunk, vision_batch)

    # ------------------------------------------------------------------ requests

    def stream(self, image, prompt: str, *, max_new_tokens: int = 128, sampling: SamplingConfig | None = None,
               system: str | None = None, channels: str = "bgr", iss: bool = True) -> Generation:
        """Start a request; iterate the result for text pieces as they are decoded."""
        check_request(prompt, max_new_tokens, sampling, system, iss)
        check_choice("channels", channels, CHANNEL_ORDERS)
        state = _RequestState()
        return Generation(state, self._run(state, image, prompt, max_new_tokens, sampling or SamplingConfig(), system,
                                           channels, iss))

    def generate(self, image, prompt: str, **kwargs) -> Result:
        gen = self.stream(image, prompt, **kwargs)
        for _ in gen:
            pass
        return gen.result

    def prepare_image(self, image, channels: str = "bgr", iss: bool = True) -> PreparedImage:
        """The CPU half of encoding: decode, tile, resize, normalise.  Safe to run on another thread
        while this object decodes (the camera loop prepares frame N+1 during caption N)."""
        t0 = time.perf_counter()
        rgb = load_image(image, channels=channels, background=self.manifest.preprocess.alpha_background,
                         max_pixels=self.max_image_pixels, exif_orientation=self.exif_orientation)  # [H, W, 3]
        pixels, layout = vision_pixels(rgb, self.manifest, iss)  # [tiles, 3, S, S]
        return PreparedImage(pixels, layout, (time.perf_counter() - t0) * 1e3)

    def encode_prepared(self, prepared: PreparedImage) -> EncodedImage:
        """The vision graph over prepared pixels -> embeddings `stream()` accepts in place of an image."""
        t0 = time.perf_counter()
        embeds = self.vision_batcher.encode(prepared.pixels)  # [tiles, n*n, dim], in one call with concurrent ones
        if prepared.layout is not None:
            embeds = gather_tokens(embeds, prepared.layout)[None]  # [1, image_tokens, dim]
        return EncodedImage(embeds, prepared.layout, prepared.preprocess_ms, (time.perf_counter() - t0) * 1e3)

    def encode_image(self, image, channels: str = "bgr", timings: Timings | None = None,
                     iss: bool = True) -> tuple[np.ndarray, TileLayout | None]:
        """image -> ([1, image_tokens, dim] embeddings, the tile layout or None for a static model)."""
        enc = self._encoded(image, channels, iss)
        if timings is not None:
            timings.preprocess_ms, timings.vision_ms = enc.preprocess_ms, enc.vision_ms
        return enc.embeds, enc.layout

    def _encoded(self, image, channels: str, iss: bool) -> EncodedImage:
        """Any image, or one encoded ahead (returned as it is) -> EncodedImage."""
        if isinstance(image, EncodedImage):
            return image
        return self.encode_prepared(self.prepare_image(image, channels, iss))

    # ------------------------------------------------------------------ video

    def captions(self, source, prompt: PromptConfig | str = "Describe the image.", cadence: Cadence | None = None,
                 *, realtime: bool = True, pieces: bool = False, on_frame=None) -> CaptionStream | CaptionStreams:
        """Caption a video source continuously; iterate the result for CaptionEvents.

            with vl.captions(VideoSource.camera(0), "What is happening?", Cadence(interval=2)) as events:
                for ev in events:
                    print(ev.frame, ev.caption, ev.latency_ms)

        source: VideoSource.camera/file/url/gst(...), a FrameFeed your app pushes frames into, or any
        iterable of BGR arrays (or (array, seconds) pairs).  The newest frame is captioned; frames that
        arrive meanwhile are dropped and counted (`realtime=False`: files and iterables give every frame
        in order instead).  See runtime.video.captioner for the cadence, the change gate and the overlap.
        source may also be a dict {name: source} or a list of sources: all are captioned at once through this
        FlashVL (its engine batches their captions) and one CaptionStreams yields their events, `ev.stream`
        naming each.  Several captions() on one FlashVL at once work too.
        """
        return open_captions(self, source, prompt, cadence, realtime=realtime, pieces=pieces, on_frame=on_frame)

    # ------------------------------------------------------------------ threads

    @property
    def overlaps_by_default(self) -> bool:
        """Whether the camera loop prepares frame N+1 while decoding N unless told: yes where the model runs
        on a GPU (the CPU is free); not on an ONNX Runtime CPU, where both halves want the same cores
        (measured on 2 cores at full size: 3% more captions/s for 44% more latency; docs/camera-streams.md)."""
        return self.backend.name == TENSORRT

    @property
    def encodes_concurrently(self) -> bool:
        """Whether encode_prepared() may run on one thread while another decodes: ONNX Runtime sessions
        can; the TensorRT pair shares one CUDA stream, so its vision runs between decodes."""
        return self.backend.name != TENSORRT

    def enter_thread(self) -> None:
        """Call on a thread of yours before it runs the model (TensorRT: makes the GPU current there)."""
        if self._owner is not None:
            self._owner.cuda.enter_thread()

    def leave_thread(self) -> None:
        if self._owner is not None:
            self._owner.cuda.leave_thread()

    def cancel(self) -> None:
        """From any thread: end every request in flight or queued (each raises runtime.errors.Cancelled; a
        graph call in flight stops between nodes on ONNX Runtime, a TensorRT call is milliseconds and
        finishes), and refuse new ones as cancelled until resume().  To end one request, cancel its
        Generation instead."""
        self.engine.cancel_all()
        if hasattr(self.vision, "cancel"):
            self.vision.cancel()

    def resume(self) -> None:
        if hasattr(self.vision, "resume"):
            self.vision.resume()
        self.engine.resume()

    def _run(self, state: _RequestState, image, prompt, max_new_tokens, sampling, system, channels,
             iss) -> Iterator[str]:
        timings, t_start = Timings(), time.perf_counter()
        embeds, layout = None, None
        if image is not None:
            enc = self._encoded(image, channels, iss)
            embeds, layout = enc.embeds, enc.layout
            timings.preprocess_ms, timings.vision_ms = enc.preprocess_ms, enc.vision_ms
        image_tokens = 0 if embeds is None else embeds.shape[1]
        ids = self.tokenizer.encode_prompt(prompt, image_tokens=image_tokens, system=system)  # [P]
        check_prompt_fits(len(ids), image_tokens, self.decoder.max_seq_len)
        stops = self.manifest.tokens.stop_ids
        seq = Sequence(ids, self.embed.prompt(ids, embeds)[0], Sampler(sampling), max_new_tokens, stops,
                       self.decoder.max_seq_len, timings, t_start)  # prompt rows [P, D]
        engine = self.engine
        state.cancel_fn = lambda: engine.cancel(seq)
        if state.cancelled:
            raise Cancelled("cancelled")
        engine.submit(seq)  # QueueFull when too many wait
        text = self.tokenizer.stream_decoder()
        pieces, tokens = [], []
        try:
            while True:
                item = _next_item(seq.out)
                if isinstance(item, Done):
                    if item.error is not None:
                        raise item.error
                    break
                tokens.append(item)
                if item in stops:
                    continue
                piece = text.push(item)
                if piece:
                    pieces.append(piece)
                    yield piece
        finally:
            engine.cancel(seq)  # a no-op once it finished; else the reader stopped early (or Ctrl-C)
        tail = text.flush()
        if tail:
            pieces.append(tail)
            yield tail
        out = [t for t in tokens if t not in stops]
        state.result = Result(text="".join(pieces), token_ids=out, prompt_tokens=len(ids),
                              image_tokens=image_tokens, finish_reason=seq.finish_reason, timings=timings,
                              tiling=None if layout is None else layout.as_dict())


def _next_item(out: queue.SimpleQueue):
    """The next token id or Done; waits in short slices so that Ctrl-C reaches a waiting main thread."""
    while True:
        try:
            return out.get(timeout=0.2)
        except queue.Empty:
            continue


class _OnEngineThread:
    """A vision engine whose calls run on the engine loop's thread (TensorRT: one CUDA stream for both)."""

    def __init__(self, engine: Engine, vision):
        self.engine, self.vision = engine, vision

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        return self.engine.call_between_steps(lambda: self.vision.encode(pixels))
