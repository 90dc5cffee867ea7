"""Arguments of the wrong type or range, text that is not text, a stdout that fails: one clear line each.

The Python API raises FlashVLError naming the argument (runtime.arguments) instead of a TypeError or
AttributeError from deep inside; the CLI prints one `error:` line that blames the right thing.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from runtime import FlashVL
from runtime.arguments import check_text, cpu_count
from runtime.errors import FlashVLError
from runtime.video import Cadence, PromptConfig
from tests.conftest import ROOT, assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def vl(tiny_engine):
    return FlashVL.load(tiny_engine)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(max_new_tokens=2.5), "max_new_tokens must be an integer at least 1, got 2.5 (float)"),
    (dict(max_new_tokens="5"), "max_new_tokens must be an integer at least 1, got '5' (str)"),
    (dict(max_new_tokens=True), "max_new_tokens must be an integer at least 1, got True (bool)"),
    (dict(max_new_tokens=0), "max_new_tokens must be an integer at least 1, got 0"),
    (dict(sampling={"temperature": 0.7}), "sampling must be a runtime.SamplingConfig or None, got dict"),
    (dict(system=5), "system must be a string or None, got int"),
    (dict(system="\ud800"), "system is not valid text: character 0 is a lone surrogate"),
    (dict(iss="no"), "iss must be True or False, got 'no'"),
    (dict(channels=3), "channels must be one of ['bgr', 'rgb'], got 3"),
])
def test_generate_arguments_of_the_wrong_type_name_themselves(vl, kwargs, needle):
    with pytest.raises(FlashVLError) as e:
        vl.generate(None, "Describe the image.", **kwargs)
    assert needle in str(e.value), str(e.value)


@pytest.mark.parametrize("prompt, needle", [
    ("a\udcffb", "prompt is not valid text: character 1 is the byte b'\\xff', which is not UTF-8"),
    ("\ud800", "prompt is not valid text: character 0 is a lone surrogate"),
    (b"hello", "prompt must be a string, got bytes b'hello'; decode bytes first"),
    (None, "prompt must be a string, got NoneType"),
])
def test_a_prompt_that_is_not_text(vl, prompt, needle):
    with pytest.raises(FlashVLError) as e:
        vl.stream(None, prompt)
    assert needle in str(e.value), str(e.value)


def test_text_with_any_valid_character_goes_through(vl):
    text = "naïve 日本語 \U0001f600 \x00 <|im_end|>"
    assert check_text("prompt", text) == text
    assert vl.generate(None, text, max_new_tokens=2).finish_reason in ("stop", "length")


@pytest.mark.parametrize("kwargs, needle", [
    (dict(threads=100_000), f"threads must be an integer in 1..{cpu_count()}, got 100000"),
    (dict(threads=1.5), "threads must be an integer in 1.."),
    (dict(threads=0), "threads must be an integer in 1.."),
    (dict(max_seq_len="9"), "max_seq_len must be an integer in 2..256, got '9' (str)"),
    (dict(max_seq_len=10**6), "max_seq_len must be an integer in 2..256"),
    (dict(spinning="x"), "spinning must be True or False"),
    (dict(cuda_graphs=None), "cuda_graphs must be True or False"),
])
def test_load_arguments(tiny_engine, kwargs, needle):
    with pytest.raises(FlashVLError) as e:
        FlashVL.load(tiny_engine, **kwargs)
    assert needle in str(e.value), str(e.value)


def test_load_wants_a_path():
    with pytest.raises(FlashVLError, match="engine_dir must be a path .* got int"):
        FlashVL.load(7)


@pytest.mark.parametrize("make, needle", [
    (lambda: Cadence(interval="2"), "interval must be a finite number, got '2'"),
    (lambda: Cadence(interval=float("nan")), "interval must be a finite number, got nan"),
    (lambda: Cadence(min_change="x"), "--min-change must be a finite number"),
    (lambda: Cadence(overlap=1), "overlap must be True or False, got 1"),
    (lambda: PromptConfig(max_new_tokens=1.5), "max_new_tokens must be an integer at least 1"),
    (lambda: PromptConfig("a\udcffb"), "prompt is not valid text"),
    (lambda: PromptConfig(sampling={}), "sampling must be a runtime.SamplingConfig"),
])
def test_stream_settings(make, needle):
    with pytest.raises(FlashVLError) as e:
        make()
    assert needle in str(e.value), str(e.value)


def test_captions_arguments(vl):
    with pytest.raises(FlashVLError, match="prompt must be a string or a runtime.video.PromptConfig, got int"):
        vl.captions([], 5)
    with pytest.raises(FlashVLError, match="cadence must be a runtime.video.Cadence or None, got dict"):
        vl.captions([], "hi", {"interval": 2})


# ----------------------------------------------------------------------------- the CLI


def _run_bytes(*args: bytes | str, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    argv = [sys.executable.encode(), *[a if isinstance(a, bytes) else a.encode() for a in args]]
    return subprocess.run(argv, cwd=ROOT, env=env, stdout=stdout, stderr=subprocess.PIPE, timeout=120)


@pytest.mark.parametrize("flag", ["--prompt", "--system"])
def test_cli_text_that_is_not_utf8(tiny_engine, flag):
    proc = _run_bytes("-m", "runtime.run", "--engine", str(tiny_engine), flag, b"caf\xe9")
    proc = subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())
    assert_one_line_error(proc, f"{flag} is not valid text", "the byte b'\\xe9', which is not UTF-8")


def test_cli_threads_are_bounded(tiny_engine):
    assert_one_line_error(run_cli("-m", "runtime.run", "--engine", str(tiny_engine), "--threads", "100000"),
                          "--threads must be an integer in 1..", "got 100000")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("extra", [(), ("--json",), ("--video", "samples/clip.mp4", "--no-realtime", "--max-captions",
                                                      "1"), ("--video", "samples/clip.mp4", "--no-realtime",
                                                             "--max-captions", "1", "--jsonl", "-")])
def test_a_stdout_that_cannot_be_written_is_named_not_the_engine(tiny_engine, extra):
    with open("/dev/full", "w") as full:
        proc = _run_bytes("-m", "runtime.run", "--engine", str(tiny_engine), *extra, stdout=full)
    proc = subprocess.CompletedProcess(proc.args, proc.returncode, "", proc.stderr.decode())
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(errors) == 1 and errors[0].startswith("error: stdout: cannot write") and \
        "No space left on device" in errors[0] and "engine" not in errors[0], proc.stderr


def test_a_closed_pipe_is_named_not_the_engine(tiny_engine):
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "runtime.run", "--engine", str(tiny_engine)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # `... | true`: the reader is gone before the first byte
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 2 and "Traceback" not in stderr, stderr
    assert "error: stdout: cannot write the answer (Broken pipe); the program reading the pipe exited" in stderr


def test_a_closed_stdout_fd(tiny_engine):
    """`... >&-`: Python has no sys.stdout at all."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    proc = subprocess.run(["sh", "-c", '"$0" -m runtime.run --engine "$1" >&-', sys.executable, str(tiny_engine)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc, "stdout is closed")


def test_jsonl_to_a_stream_that_cannot_seek(tiny_engine):
    """--jsonl /dev/stderr (a pipe here): appending must not need to seek."""
    proc = run_cli("-m", "runtime.run", "--engine", str(tiny_engine), "--video", "samples/clip.mp4", "--no-realtime",
                   "--max-captions", "1", "--max-new-tokens", "3", "--jsonl", "/dev/stderr")
    assert proc.returncode == 0 and '"caption"' in proc.stderr, proc.stderr


def test_ffmpeg_says_nothing_before_the_one_error_line(tiny_engine, tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("not a video")
    proc = run_cli("-m", "runtime.run", "--engine", str(tiny_engine), "--video", str(fake))
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: --video"), proc.stderr
    verbose = run_cli("-m", "runtime.run", "--engine", str(tiny_engine), "--video", str(fake), "-v")
    assert "moov atom not found" in verbose.stderr  # -v keeps FFmpeg's own words


@pytest.mark.parametrize("t", [1e-40, 1e-50, 1e308, -0.5])
def test_temperature_extremes_are_refused_by_name(t):
    """1e-40 overflowed float32 into a softmax error that blamed the model; 1e308 sampled noise."""
    from runtime.sampling import SamplingConfig
    with pytest.raises(FlashVLError, match=r"temperature must be 0 \(greedy\) or between 0.001 and 1000"):
        SamplingConfig(temperature=t)
    assert SamplingConfig(temperature=1e-3).temperature == 1e-3 and SamplingConfig(temperature=1e3)


def test_a_closed_stdin_for_image_dash(tiny_engine):
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    proc = subprocess.run(["sh", "-c", '"$0" -m runtime.run --engine "$1" --image - <&-', sys.executable,
                           str(tiny_engine)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc, "--image -: stdin is closed")


@pytest.mark.parametrize("flag", ["--video", "--save", "--engine"])
def test_paths_that_are_not_utf8_are_refused_before_opencv_or_onnx_runtime_see_them(tiny_engine, tmp_path, flag):
    """OpenCV's VideoCapture/VideoWriter segfaulted on them (exit 139, no word); tokenizers blamed the file."""
    bad = os.fsencode(tmp_path) + b"/x\xff"
    args = {"--video": [b"--video", bad + b".mp4"], "--engine": [],
            "--save": [b"--video", b"samples/clip.mp4", b"--save", bad + b".mp4"]}[flag]
    engine = bad if flag == "--engine" else os.fsencode(tiny_engine)
    if flag == "--engine":
        import shutil
        shutil.copytree(tiny_engine, os.fsdecode(bad))
    proc = _run_bytes("-m", "runtime.run", "--engine", engine, *args)
    proc = subprocess.CompletedProcess(proc.args, proc.returncode, "", proc.stderr.decode())
    assert_one_line_error(proc, "x\\xff", "is a byte that is not UTF-8", "rename it")


def test_control_characters_in_an_error_are_shown_escaped(tmp_path):
    from runtime.cli_output import error_line
    assert error_line(ValueError("a\x1b[2Jb\nc\u202ed\x00")) == "error: a\\x1b[2Jb\\nc\\u202ed\\x00"
    proc = run_cli("-m", "runtime.run", "--engine", str(tmp_path / "nope\x1b[2J"))
    line = assert_one_line_error(proc, "nope\\x1b[2J")
    assert "\x1b" not in line


def test_jsonl_to_a_full_disk_names_jsonl(tiny_engine):
    proc = run_cli("-m", "runtime.run", "--engine", str(tiny_engine), "--video", "samples/clip.mp4", "--no-realtime",
                   "--max-captions", "1", "--max-new-tokens", "2", "--jsonl", "/dev/full")
    assert_one_line_error(proc, "--jsonl /dev/full: cannot write (No space left on device)")
