"""manifest.json is checked against itself, the graphs and the tokenizer it describes (runtime.engine_check).

Each edit below used to load: it then ended in an ONNX Runtime traceback mid-request, decoded past the
end of the answer, or skipped the hash check.  Now each is one EngineError at load that names the field
and both values.
"""

from __future__ import annotations

import json
import shutil

import pytest

from tests.extras import needs

needs("export")

import onnx

from runtime import FlashVL
from runtime.engine_check import RECORD_KEY, model_record
from runtime.errors import EngineError
from runtime.manifest import load_manifest
from runtime.onnx_meta import read_metadata
from tests.conftest import assert_one_line_error, run_cli


def _copy(engine, tmp_path, edit=None):
    d = tmp_path / "engine"
    shutil.copytree(engine, d)
    if edit is not None:
        raw = json.loads((d / "manifest.json").read_text())
        edit(raw)
        (d / "manifest.json").write_text(json.dumps(raw))
    return d


def _set(path: str, value):
    def edit(raw):
        *parents, key = path.split(".")
        node = raw
        for p in parents:
            node = node[p]
        assert key in node, path
        node[key] = value
    return edit


# Edits the manifest's own numbers or the graphs' I/O tables give away (no record needed).
STRUCTURAL = [
    ("preprocess.height", 65, ["preprocess.height is 65", "vision.image_size", "64"]),
    ("vision.image_size", 128, ["preprocess.height is 64", "128"]),
    ("vision.patch_size", 16, ["adapter.image_tokens is 16", "gives 4"]),
    ("adapter.image_tokens", 17, ["adapter.image_tokens is 17", "gives 16"]),
    ("adapter.out_dim", 32, ["adapter.out_dim is 32", "decoder.dim", "64"]),
    ("decoder.vocab_size", 700, ["embeddings.shape is [640, 64]", "[700, 64]"]),
    ("decoder.n_layers", 3, ["past_key inputs is 2", "decoder.n_layers gives 3"]),
    ("decoder.n_layers", 1, ["past_key inputs is 2", "decoder.n_layers gives 1"]),
    ("decoder.n_kv_heads", 1, ["'past_key.0' is ['past_seq', 'batch', 2, 16]", "['*', '*', 1, 16]"]),
    ("decoder.head_dim", 8, ["n_heads x head_dim is 32", "64"]),
    ("tokens.stop_ids", [506], ["stop_ids [506] lack im_end_id 508"]),
    ("tokens.image_pad_id", 9999, ["image_pad_id 9999 is outside", "0..639"]),
    ("files", [], ["files does not list", "vision.onnx", "tokenizer.json"]),
    ("graphs.decoder.file", "../decoder.onnx", ["graphs.decoder.file is '../decoder.onnx'", "inside the engine"]),
    ("tokenizer", "/etc/passwd", ["tokenizer is '/etc/passwd'", "inside the engine folder"]),
]

# Edits only the graphs' stamped record catches: nothing else in the folder shows these numbers.
RECORDED = [
    ("vision.n_layers", 3, ["vision.n_layers is 3", "vision.onnx was exported with 2"]),
    ("vision.mlp_dim", 96, ["vision.mlp_dim is 96", "vision.onnx was exported with 64"]),
    ("decoder.max_seq_len", 100000, ["decoder.max_seq_len is 100000", "decoder.onnx was exported with 256"]),
    ("decoder.rope_theta", 10.0, ["decoder.rope_theta is 10.0", "decoder.onnx was exported with 1000000.0"]),
    ("decoder.hidden_dim", 256, ["decoder.hidden_dim is 256", "decoder.onnx was exported with 128"]),
    ("tokens.stop_ids", [508, 507], ["tokens.stop_ids is [508, 507]", "decoder.onnx was exported with [508, 506]"]),
    ("preprocess.mean", [0.4, 0.5, 0.5], ["preprocess.mean", "vision.onnx was exported with [0.5, 0.5, 0.5]"]),
]


@pytest.mark.parametrize("field, value, needles", STRUCTURAL + RECORDED, ids=lambda x: x if isinstance(x, str) else "")
def test_an_edited_manifest_is_refused_at_load_naming_the_field_and_both_values(tiny_engine, tmp_path, field,
                                                                                 value, needles):
    d = _copy(tiny_engine, tmp_path, _set(field, value))
    with pytest.raises(EngineError) as e:
        FlashVL.load(d)
    msg = str(e.value)
    assert "\n" not in msg and str(d / "manifest.json") in msg and ("re-export" in msg or "restore" in msg), msg
    for n in needles:
        assert n in msg, (n, msg)


def test_the_cli_says_it_in_one_line(tiny_engine, tmp_path):
    d = _copy(tiny_engine, tmp_path, _set("decoder.max_seq_len", 4096))
    assert_one_line_error(run_cli("-m", "runtime.run", "--engine", str(d), "--prompt", "hi"),
                          "decoder.max_seq_len is 4096", "exported with 256")


def test_every_graph_carries_the_record_of_the_numbers_it_was_exported_with(tiny_engine, tiny_dynamic_engine):
    for engine in (tiny_engine, tiny_dynamic_engine):
        m = load_manifest(engine)
        for role in ("vision", "decoder"):
            path = engine / getattr(m.graphs, role).file
            ours = read_metadata(path)  # the runtime's own protobuf reader, against onnx's
            theirs = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
            assert ours == theirs and ours[RECORD_KEY] == model_record(m, role)


def test_a_graph_without_a_record_is_still_checked_by_its_io(tiny_engine, tmp_path):
    """Folders exported before records existed load; what their I/O shows is still checked."""
    d = _copy(tiny_engine, tmp_path)
    for name in ("vision.onnx", "decoder.onnx"):
        proto = onnx.load(str(d / name), load_external_data=False)
        del proto.metadata_props[:]
        onnx.save_model(proto, str(d / name))
    raw = json.loads((d / "manifest.json").read_text())
    from runtime.files import file_entry
    raw["files"] = [vars(file_entry(d / f["path"], f["path"])) for f in raw["files"]]
    (d / "manifest.json").write_text(json.dumps(raw))
    assert FlashVL.load(d).generate(None, "hi", max_new_tokens=2).token_ids  # loads and runs
    _set("decoder.n_kv_heads", 1)(raw)
    (d / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(EngineError, match=r"'past_key.0' is \['past_seq', 'batch', 2, 16\]"):
        FlashVL.load(d)


def test_an_unlisted_weights_file_is_refused(tiny_engine, tmp_path):
    d = _copy(tiny_engine, tmp_path, lambda raw: raw.update(
        files=[f for f in raw["files"] if f["path"] != "decoder.onnx.data"]))
    with pytest.raises(EngineError, match="files does not list decoder.onnx.data"):
        FlashVL.load(d)


def test_a_stop_id_that_is_not_a_special_token_is_refused(tiny_engine, tmp_path):
    """A graph without a record (an older export) still gets the tokenizer's word on stop ids."""
    from runtime.chat import ChatTokenizer
    m = load_manifest(tiny_engine)
    import dataclasses
    tokens = dataclasses.replace(m.tokens, stop_ids=(m.tokens.im_end_id, 5))
    with pytest.raises(EngineError, match=r"stop_ids \[508, 5\] must be special tokens.*not \[5\]"):
        ChatTokenizer.load(tiny_engine / m.tokenizer, tokens, m.chat, m.decoder.vocab_size)
    with pytest.raises(EngineError, match="more than the decoder's vocab_size 100"):
        ChatTokenizer.load(tiny_engine / m.tokenizer, m.tokens, m.chat, 100)


def test_a_hash_mismatch_shows_both_whole_hashes(tiny_engine, tmp_path):
    d = _copy(tiny_engine, tmp_path)
    raw = json.loads((d / "manifest.json").read_text())
    entry = next(f for f in raw["files"] if f["path"] == "tokenizer.json")
    want = entry["sha256"][:12] + "0" * 52  # the same 12-character prefix: a shortened message would repeat it
    entry["sha256"] = want
    (d / "manifest.json").write_text(json.dumps(raw))
    (d / ".verified.json").unlink(missing_ok=True)
    with pytest.raises(EngineError) as e:
        FlashVL.load(d)
    assert want in str(e.value) and entry["sha256"][:12] in str(e.value).split("manifest.json says")[0]


@pytest.mark.parametrize("make, needle", [
    (lambda p: p.write_text("[" * 100_000 + "]" * 100_000), "not valid JSON (nested too deeply)"),
    (lambda p: p.write_text('{"schema_version": NaN}'), "NaN is not a number JSON allows"),
    (lambda p: p.write_text('{"schema_version": -Infinity}'), "-Infinity is not a number JSON allows"),
    (lambda p: p.open("wb").truncate(17 << 20), "more than 16,777,216 bytes, a manifest is a few KB"),
])
def test_a_manifest_json_that_is_no_manifest(tmp_path, make, needle):
    make(tmp_path / "manifest.json")
    with pytest.raises(EngineError) as e:
        load_manifest(tmp_path)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("field, value, needle", [
    ("adapter.shuffle_factor", 0, "adapter.shuffle_factor must be at least 1, got 0"),
    ("vision.n_heads", 0, "vision.n_heads must be at least 1, got 0"),
    ("decoder.n_kv_heads", -2, "decoder.n_kv_heads must be at least 1, got -2"),
    ("decoder.norm_eps", 0, "decoder.norm_eps must be above 0, got 0.0"),
    ("preprocess.std", [0.5, 0, 0.5], "preprocess.std must be above 0 in every channel"),
    ("decoder.rope_theta", "1e400", "decoder.rope_theta: expected a finite number, got inf"),
])
def test_zeros_and_infinities_in_the_manifest(tiny_engine, tmp_path, field, value, needle):
    """Before: ZeroDivisionError tracebacks, or an infinite number that loaded."""
    d = _copy(tiny_engine, tmp_path, _set(field, "@@" if value == "1e400" else value))
    text = (d / "manifest.json").read_text()
    (d / "manifest.json").write_text(text.replace('"@@"', "1e400"))  # valid JSON that Python reads as inf
    with pytest.raises(EngineError) as e:
        load_manifest(d)
    assert needle in str(e.value), str(e.value)


def test_a_misnamed_cache_input_is_refused(tiny_engine, tmp_path):
    def edit(raw):
        raw["graphs"]["decoder"]["inputs"][2]["name"] = "past_key.x"
    with pytest.raises(EngineError, match=r"the past_key inputs is \['past_key.x', 'past_key.1'\]"):
        load_manifest(_copy(tiny_engine, tmp_path, edit))


def test_a_manifest_that_is_a_device(tmp_path):
    (tmp_path / "manifest.json").symlink_to("/dev/zero")  # size 0 to stat, endless to read
    with pytest.raises(EngineError, match="manifest.json: not a regular file"):
        load_manifest(tmp_path)


def test_calibration_refuses_an_edited_manifest_rather_than_stamping_it(tiny_engine, tmp_path):
    from calib.calibrate import CalibConfig, calibrate
    d = _copy(tiny_engine, tmp_path, _set("preprocess.mean", [0.4, 0.5, 0.5]))
    with pytest.raises(EngineError, match=r"preprocess.mean is \[0.4, 0.5, 0.5\], but vision.onnx was exported"):
        calibrate(d, CalibConfig())


@pytest.mark.parametrize("field", ["vision.patch_size", "decoder.n_kv_heads"])
def test_a_zero_the_specs_divide_by(tiny_engine, tmp_path, field):
    with pytest.raises(EngineError, match=rf"{field.split('.')[0]}\.\w*.* must be at least 1"):
        load_manifest(_copy(tiny_engine, tmp_path, _set(field, 0)))


def test_a_listed_file_that_is_a_device(tiny_engine, tmp_path):
    d = _copy(tiny_engine, tmp_path)
    (d / "embed_tokens.npy").unlink()
    (d / "embed_tokens.npy").symlink_to("/dev/zero")
    with pytest.raises(EngineError, match="embed_tokens.npy: listed in manifest.json as a file, but it is a folder, "
                                          "device or pipe"):
        FlashVL.load(d)


@pytest.mark.parametrize("value", [-1, 10**30, 1])
def test_a_free_dimension_of_the_io_table_must_be_the_graphs_name(tiny_engine, tmp_path, value):
    def edit(raw):
        raw["graphs"]["decoder"]["inputs"][0]["shape"][0] = value  # inputs_embeds [batch, seq, dim]
    with pytest.raises(EngineError, match="input 'inputs_embeds' is float32\\['batch', 'seq', 64\\], manifest.json says"):
        FlashVL.load(_copy(tiny_engine, tmp_path, edit))
