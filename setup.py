"""Flash-VL edge runtime and export pipeline.

    pip install -e .            runtime only: numpy, opencv, tokenizers, onnxruntime (no torch)
    pip install -e .[export]    + the PyTorch export pipeline and reference (torch pinned to the CPU build)
    pip install -e .[trt]       + what building and running TensorRT plans needs besides TensorRT itself
    pip install -e .[test]      + test tools (with [export]: the parity tests need the reference)
    pip install -e .[bench]     + the benchmark's peers and plot (with [export]: the peers need the weights)
"""

from setuptools import find_packages, setup

RUNTIME = [
    "numpy>=1.24",
    "opencv-python-headless>=4.8",
    "tokenizers>=0.20",
    "onnxruntime>=1.22",  # tested with 1.32; MatMulNBits 8-bit and DequantizeLinear int4 blocks on the CPU
]
EXPORT = [
    # Pinned: an unpinned torch pulls several GB of CUDA wheels; 2.13.0 is the local CPU build.
    "torch==2.13.0",
    "onnx>=1.17",
    "onnxscript>=0.3",
    "safetensors>=0.4",
    "transformers>=5.20,<6",  # tested with 5.24; reference implementations (SigLIP, Qwen2) for parity tests, HF checkpoint configs
    "pillow>=10",  # the transformers image processor used as the preprocessing reference
    "onnxruntime>=1.32",  # quantization tools: calibrators, quantize_static with a ranges cache, MatMulNBits
    "ml_dtypes>=0.4",  # int4 numpy arrays for blocked int4 initializers
    "polygraphy>=0.49",  # graph folding checks, tensor-by-tensor drift (calib.drift)
    "onnx-graphsurgeon>=0.5",  # Polygraphy's constant folding
]
TRT = [
    # TensorRT itself comes from JetPack (python3-libnvinfer) or `pip install tensorrt` on a desktop GPU.
    "cuda-python>=12.2,<13",  # device memory, pinned memory, CUDA graphs (runtime/cuda_mem.py); CUDA 12 drivers
    "onnx>=1.17",  # the TensorRT lint before a build (export/trt_lint.py)
    "polygraphy>=0.49",  # `python -m export.trt check`
]
TEST = ["pytest>=8", "hypothesis>=6.100"]
BENCH = [
    # `python -m runtime.bench`'s peers, each on the engine's own weights, and its --plot
    "onnxruntime-genai>=0.18",  # tested with 0.18.0: its model builder and generator
    "gguf>=0.19",  # writes the GGUF llama.cpp reads (export/peers/gguf_file.py)
    "llama-cpp-python==0.3.36",  # llama.cpp; builds from source with the local compiler (~8 min on 2 cores)
    "matplotlib>=3.8",
]

setup(
    name="flash-vl-edge",
    version="0.1.0",
    description="Edge runtime for the Flash-VL 2B vision-language model: ONNX export, ONNX Runtime / TensorRT runtime",
    packages=find_packages(include=["runtime", "runtime.*", "export", "export.*", "calib", "calib.*"]),
    package_data={"calib": ["images/*"], "export.demo": ["checkpoint/*"]},
    python_requires=">=3.10",
    install_requires=RUNTIME,
    extras_require={
        "export": EXPORT,
        "trt": TRT,
        "test": TEST,
        "bench": BENCH,
    },
)
