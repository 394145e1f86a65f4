"""Reliability tests of the real quantppl binary (issue 6): determinism, and the bad inputs of the
error catalogue that tests/cli/test_cli.py does not already cover.

Run by CTest as `cli_reliability` (see CMakeLists.txt) with QUANTPPL_BIN and QUANTPPL_FIXTURES in the
environment, like test_cli.py.
"""

import glob
import io
import json
import os

import pytest

from cli import conftest
from cli.conftest import EXIT_DATA, EXIT_IO, EXIT_USAGE, FIXTURES, REPO, TINY, assert_clean_error, run

TINY_VOCAB_SIZE = 384  # tiny.pt's quantppl.json vocab_size (tests/fixtures/make_tiny_model.py)

# Variants that exercise every quantizer path: per tensor/channel/group, both schemes, all ranges.
VARIANTS = "fp32,absmax:8,zeropoint:4:group64,absmax:4:channel:mse,zeropoint:8:tensor:p99.9"
# Named tolerances (issue 6): threads and batch size may only change float rounding.
kThreadsRelTol = 1e-6
kBatchRelTol = 1e-5
# KL between fp32 and a variant that barely differs (absmax:8: ~4e-5 nats) is a difference of nearly
# equal log-probabilities, so float32 rounding that depends on the batch shape shows up in it as an
# absolute error (measured: 8e-10 nats between batch sizes 1 and 8), not a relative one.
kKlAbsTol = 1e-8


def compare_json(*args):
    return conftest.compare_json("--variants", VARIANTS, *args)


def timeless(fields):
    """Everything but wall-clock times ("seconds", "load_seconds", ...), which no run repeats."""
    return {k: v for k, v in fields.items() if not k.endswith("seconds")}


def without_seconds(results):
    return [timeless(r) for r in results]


def assert_close(a, b, rel_tol, fields=("ppl", "nll", "kl_mean")):
    assert [r["variant"] for r in a] == [r["variant"] for r in b]
    for x, y in zip(a, b):
        for f in fields:
            if x[f] == y[f]:
                continue
            tol = rel_tol * max(abs(x[f]), abs(y[f])) + (kKlAbsTol if f.startswith("kl") else 0.0)
            assert abs(x[f] - y[f]) <= tol, (x["variant"], f, x[f], y[f])


# ---- determinism ----

def test_same_command_gives_bit_identical_numbers():
    first = compare_json()
    second = compare_json()
    # JSON numbers are printed with round-trip precision, so equal text means equal doubles.
    assert without_seconds(first["results"]) == without_seconds(second["results"])
    assert timeless({k: v for k, v in first.items() if k != "results"}) == \
        timeless({k: v for k, v in second.items() if k != "results"})


def test_one_and_two_threads_agree():
    one = compare_json("--threads", "1")
    two = compare_json("--threads", "2")
    assert one["threads"] == 1 and two["threads"] == 2
    assert_close(one["results"], two["results"], kThreadsRelTol)


def test_batch_size_one_and_eight_agree():
    one = compare_json("--batch-size", "1")
    eight = compare_json("--batch-size", "8")
    assert_close(one["results"], eight["results"], kBatchRelTol)
    for x, y in zip(one["results"], eight["results"]):
        assert x["tokens"] == y["tokens"]


# ---- tokenizer override ----

@pytest.fixture(scope="module")
def big_tokenizer(tmp_path_factory):
    """A valid sentencepiece model with more pieces than tiny.pt's vocabulary."""
    spm = pytest.importorskip("sentencepiece")
    # A short text gives only a few dozen learned pieces; user-defined symbols (as T5's <extra_id_N>)
    # push the piece count past the model's vocabulary.
    lines = ["The river runs past the stone bridge and the north light falls on the cloud."] * 20
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=460,
                                   user_defined_symbols=[f"<extra_{i}>" for i in range(420)],
                                   hard_vocab_limit=False, model_type="unigram", minloglevel=2)
    path = tmp_path_factory.mktemp("tok") / "big.model"
    path.write_bytes(model.getvalue())
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    assert processor.get_piece_size() > TINY_VOCAB_SIZE
    return path


def test_missing_tokenizer_is_an_io_error(tmp_path):
    missing = tmp_path / "none.model"
    assert_clean_error(run("compare", "--model", TINY, "--tokenizer", str(missing)), EXIT_IO, str(missing))


def test_corrupt_tokenizer_is_a_data_error(tmp_path):
    corrupt = tmp_path / "corrupt.model"
    corrupt.write_bytes(bytes((i * 131 + 7) % 256 for i in range(4096)))
    assert_clean_error(run("compare", "--model", TINY, "--tokenizer", str(corrupt)), EXIT_DATA, str(corrupt),
                       "not a sentencepiece model")


def test_tokenizer_larger_than_the_vocabulary_is_a_data_error(big_tokenizer):
    r = run("compare", "--model", TINY, "--tokenizer", str(big_tokenizer))
    assert_clean_error(r, EXIT_DATA, str(big_tokenizer), f"vocab_size {TINY_VOCAB_SIZE}")


# ---- text ----

def test_text_too_short_for_prefix_mode_is_a_data_error(tmp_path):
    text = tmp_path / "short.txt"
    text.write_text("hello\n")
    # Windows of one token cannot be split into a prefix and a label: the message says how to fix it.
    r = run("compare", "--model", TINY, "--text", str(text), "--mode", "prefix", "--max-length", "1")
    assert_clean_error(r, EXIT_DATA, "too short for prefix mode", "--max-length 2")
    # One word + EOS is the shortest text prefix mode can score (one prediction).
    assert run("compare", "--model", TINY, "--text", str(text), "--mode", "prefix", "--variants", "fp32",
               "--quiet").returncode == 0


@pytest.mark.parametrize("mode", ["prefix", "reconstruct"])
def test_text_without_a_single_token_is_a_data_error_naming_the_file(tmp_path, mode):
    # Control and format characters are valid UTF-8 that sentencepiece drops: no token at all, too short
    # for any prediction in prefix mode, and only EOS to "predict" in reconstruct mode.
    text = tmp_path / "controls.txt"
    text.write_text("\x01\x02\u200b\x7f\n" * 5, encoding="utf-8")
    r = run("compare", "--model", TINY, "--text", str(text), "--mode", mode)
    assert_clean_error(r, EXIT_DATA, str(text), "no token")


def test_empty_text_file_is_a_data_error(tmp_path):
    empty = tmp_path / "zero.txt"
    empty.write_bytes(b"")
    assert_clean_error(run("compare", "--model", TINY, "--text", str(empty)), EXIT_DATA, str(empty), "empty")
    assert_clean_error(run("compare", "--model", TINY, "--text", "-", stdin=""), EXIT_DATA, "<stdin>", "empty")


def test_invalid_utf8_text_is_a_data_error(tmp_path):
    text = tmp_path / "latin1.txt"
    text.write_bytes("caf\u00e9 cr\u00e8me br\u00fbl\u00e9e\n".encode("latin-1") * 10)
    assert_clean_error(run("compare", "--model", TINY, "--text", str(text)), EXIT_DATA, "latin1.txt")


# ---- model ----

@pytest.mark.parametrize("name", ["wrong_signature.pt", "wrong_output.pt", "bad_vocab.pt", "no_tokenizer.pt"])
def test_more_bad_models_are_data_errors_naming_the_file(name):
    r = run("compare", "--model", os.path.join(FIXTURES, name), "--variants", "fp32,absmax:8")
    assert_clean_error(r, EXIT_DATA, name)


def test_model_that_is_a_directory_or_empty_or_truncated(tmp_path):
    assert_clean_error(run("compare", "--model", str(tmp_path)), EXIT_IO, str(tmp_path))
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert_clean_error(run("compare", "--model", str(empty)), EXIT_DATA, "empty.pt")
    truncated = tmp_path / "truncated.pt"
    with open(TINY, "rb") as f:
        truncated.write_bytes(f.read()[: os.path.getsize(TINY) // 2])
    assert_clean_error(run("compare", "--model", str(truncated)), EXIT_DATA, "truncated.pt")


@pytest.fixture(scope="module")
def broken_models(tmp_path_factory):
    """tiny.pt re-saved with broken metadata or a weight holding Inf (TorchScript via Debian's torch)."""
    torch = pytest.importorskip("torch")
    d = tmp_path_factory.mktemp("models")
    extra = {"quantppl.json": "", "tokenizer.model": ""}
    module = torch.jit.load(TINY, _extra_files=extra)
    meta = json.loads(extra["quantppl.json"])
    tok = extra["tokenizer.model"]

    def save(name, module_, meta_):
        torch.jit.save(module_, str(d / name), _extra_files={"quantppl.json": json.dumps(meta_), "tokenizer.model": tok})
        return str(d / name)

    paths = {
        "missing_field.pt": save("missing_field.pt", module, {k: v for k, v in meta.items() if k != "eos_token_id"}),
        "future_version.pt": save("future_version.pt", module, dict(meta, format_version=99)),
        "string_max_length.pt": save("string_max_length.pt", module, dict(meta, max_length="64")),
    }
    with torch.no_grad():
        inf_module = torch.jit.load(TINY)
        dict(inf_module.named_parameters())["decoder.block.0.layer.0.SelfAttention.q.weight"][2, 7] = float("inf")
    paths["inf_weight.pt"] = save("inf_weight.pt", inf_module, meta)
    return paths


@pytest.mark.parametrize("name,needle", [
    ("missing_field.pt", "eos_token_id"), ("future_version.pt", "format_version"),
    ("string_max_length.pt", "max_length"), ("inf_weight.pt", "decoder.block.0.layer.0.SelfAttention.q"),
])
def test_bad_metadata_and_inf_weights_are_data_errors(broken_models, name, needle):
    r = run("compare", "--model", broken_models[name], "--variants", "fp32,absmax:8")
    assert_clean_error(r, EXIT_DATA, name, needle)


# ---- flags ----

@pytest.mark.parametrize("spec,needle", [
    ("absmax:1", "bits"), ("absmax:-1", "bits"), ("zeropoint:4:tensor:p-1", "percentile"),
    ("zeropoint:4:tensor:p0.0", "percentile"), ("absmax:4:block64", "unknown granularity"),
])
def test_more_malformed_variants_are_usage_errors(spec, needle):
    assert_clean_error(run("compare", "--model", TINY, "--variants", spec), EXIT_USAGE, needle)


def test_conflicting_quantize_outputs_are_a_usage_error(tmp_path):
    r = run("quantize", "--model", TINY, "--variant", "absmax:8", "--output", str(tmp_path / "a.pt"),
            "--packed", str(tmp_path / "a.qpack"))
    assert_clean_error(r, EXIT_USAGE, "--output", "--packed")
    assert list(tmp_path.iterdir()) == []


def test_double_weight_model_is_a_data_error():
    r = run("compare", "--model", os.path.join(FIXTURES, "double_weight.pt"), "--variants", "fp32")
    assert_clean_error(r, EXIT_DATA, "double_weight.pt", "float32")


# ---- output ----

@pytest.mark.parametrize("target,needle", [
    ("/proc/version", "directory '/proc' does not accept new files"),
    ("/proc/quantppl-result.json", "directory '/proc' does not accept new files"),
    ("README.md/r.json", "README.md' is not a directory"),
])
def test_unwritable_output_is_an_io_error_and_leaves_nothing(target, needle):
    # Tests run as root, so a chmod'ed directory would still be writable: /proc is not, and a path
    # under a regular file cannot exist. Checked before any work, so the run is quick.
    path = target if target.startswith("/") else os.path.join(REPO, target)
    existed = os.path.exists(path)
    r = run("compare", "--model", TINY, "--variants", "fp32", "--output", path, "--force")
    assert_clean_error(r, EXIT_IO, path, needle)
    assert os.path.exists(path) == existed
    assert glob.glob(path + ".tmp.*") == []


# Interrupted runs (SIGINT, SIGTERM): tests/reliability/test_interrupts.py.


@pytest.mark.parametrize("args,code", [
    (["--model", "MISSING"], EXIT_IO), (["--model", os.path.join(FIXTURES, "nan_weight.pt")], EXIT_DATA),
    (["--text", "BINARY"], EXIT_DATA), (["--variants", "absmax:4:group96"], EXIT_USAGE),
    (["--max-length", "100000"], EXIT_USAGE),
])
def test_an_error_leaves_no_output_file(tmp_path, args, code):
    out = tmp_path / "out" / "r.json"
    out.parent.mkdir()
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 4)
    args = [str(tmp_path / "none.pt") if a == "MISSING" else str(tmp_path / "blob.bin") if a == "BINARY" else a
            for a in args]
    if "--model" not in args:
        args = ["--model", TINY, *args]
    r = run("compare", *args, "--format", "json", "--output", str(out))
    assert_clean_error(r, code)
    assert list(out.parent.iterdir()) == []  # neither r.json nor r.json.tmp.*
