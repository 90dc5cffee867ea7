"""Flash-VL edge runtime: NumPy + OpenCV + tokenizers + ONNX Runtime, never PyTorch.

Public API: `FlashVL`, `Result`, `SamplingConfig`, `FlashVLError` (see runtime.api); camera and video
streams: `FlashVL.captions()` with the sources and configs of runtime.video.
"""

from runtime.errors import FlashVLError


def __getattr__(name):
    # Lazy, so `python -m runtime.run --help` and the manifest tools start without loading ONNX Runtime.
    if name in ("FlashVL", "Result", "Generation"):
        from runtime import api
        return getattr(api, name)
    if name == "SamplingConfig":
        from runtime.sampling import SamplingConfig
        return SamplingConfig
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")


__all__ = ["FlashVL", "Result", "Generation", "SamplingConfig", "FlashVLError"]
