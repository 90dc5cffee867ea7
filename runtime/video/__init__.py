"""Camera and video-stream captioning: live video in, timestamped captions out.

    frame.py      Frame, VideoSource (camera / file / url / gst), SourceStats
    sources.py    open a source with OpenCV; reconnect, loop, skip corrupt frames
    capture.py    the capture thread, the newest-frame slot, FrameFeed for an app's own frames
    change.py     the scene-change measure behind --min-change
    model.py      what the loop drives: prepare / encode / describe (FlashVLModel over a FlashVL)
    captioner.py  the caption loop: cadence, change gate, encode N+1 while decoding N, events
    streams.py    several sources through one model at once, their events merged (CaptionStreams)
    names.py      stream names: name=NAME: on the command line, default names, uniqueness
    overlay.py    the caption drawn on a frame (word-wrapped, readable on bright and dark scenes)
    outputs.py    JSON Lines and the --save video writer
    cli.py        `python -m runtime.run --camera/--video/--url/--gst ...`

    from runtime import FlashVL
    from runtime.video import VideoSource, Cadence
    vl = FlashVL.load("engines/tiny")
    with vl.captions(VideoSource.file("clip.mp4"), "Describe the scene.") as events:
        for ev in events:
            print(ev.frame, ev.caption)

    # several sources at once: one iterator, ev.stream names the source
    with vl.captions({"door": VideoSource.file("a.mp4"), "yard": VideoSource.camera(1)}) as events:
        for ev in events:
            print(ev.stream, ev.frame, ev.caption)
"""

from runtime.video.capture import FrameFeed
from runtime.video.captioner import Cadence, CaptionEvent, CaptionPiece, CaptionStream, StreamStats
from runtime.video.frame import Frame, SourceError, SourceStats, VideoSource
from runtime.video.model import PromptConfig
from runtime.video.streams import CaptionStreams

__all__ = ["Cadence", "CaptionEvent", "CaptionPiece", "CaptionStream", "CaptionStreams", "Frame", "FrameFeed",
           "PromptConfig", "SourceError", "SourceStats", "StreamStats", "VideoSource"]
