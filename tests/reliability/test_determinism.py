"""Reliability tests of the real quantppl binary (issue 6): determinism, and the bad inputs of the
error catalogue that tests/cli/test_cli.py does not already cover.

Run by CTest as `cli_reliability` (see CMakeLists.txt) with QUANTPPL_BIN and QUANTPPL_FIXTURES in the
environment, like test_cli.py.
"""

import glob
import io
import json
import os
import signal
import subprocess
import time

import pytest

BIN = os.environ.get("QUANTPPL_BIN", "build/quantppl")
FIXTURES = os.environ.get("QUANTPPL_FIXTURES", "build/fixtures")
TINY = os.path.join(FIXTURES, "tiny.pt")
TINY_VOCAB_SIZE = 384  # tiny.pt's quantppl.json vocab_size (tests/fixtures/make_tiny_model.py)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_MODEL = os.path.join(REPO, "models", "default.pt")
DEFAULT_TEXT = os.path.join(REPO, "data", "default_eval.txt")

# Exit codes documented in README.md.
EXIT_USAGE, EXIT_DATA, EXIT_IO = 2, 3, 4

# Variants that exercise every quantizer path: per tensor/channel/group, both schemes, all ranges.
VARIANTS = "fp32,absmax:8,zeropoint:4:group64,absmax:4:channel:mse,zeropoint:8:tensor:p99.9"
# Named tolerances (issue 6): threads and batch size may only change float rounding.
kThreadsRelTol = 1e-6
kBatchRelTol = 1e-5
# KL between fp32 and a variant that barely differs (absmax:8: ~4e-5 nats) is a difference of nearly
# equal log-probabilities, so float32 rounding that depends on the batch shape shows up in it as an
# absolute error (measured: 8e-10 nats between batch sizes 1 and 8), not a relative one.
kKlAbsTol = 1e-8


def run(*args, stdin=None):
    return subprocess.run([BIN, *args], input=stdin, capture_output=True, text=True, timeout=600)


def assert_clean_error(result, code, *needles):
    assert result.returncode == code, (result.returncode, result.stderr)
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err  # one line
    for needle in needles:
        assert needle in err, err
    for crash in ("terminate called", "Exception raised from", "frame #", "Segmentation", "Aborted"):
        assert crash not in result.stderr
    assert result.stdout == ""


def compare_json(*args):
    r = run("compare", "--model", TINY, "--format", "json", "--quiet", "--variants", VARIANTS, *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def without_seconds(results):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in results]


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
    assert {k: v for k, v in first.items() if k != "results"} == {k: v for k, v in second.items() if k != "results"}


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
    # Windows of one token cannot be split into a prefix and a label.
    r = run("compare", "--model", TINY, "--text", str(text), "--mode", "prefix", "--max-length", "1")
    assert_clean_error(r, EXIT_DATA, "too short for prefix mode")


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

@pytest.mark.parametrize("target", ["/proc/version", "/proc/quantppl-result.json", "README.md/r.json"])
def test_unwritable_output_is_an_io_error_and_leaves_nothing(target):
    # Tests run as root, so a chmod'ed directory would still be writable: /proc is not, and a path
    # under a regular file cannot exist.
    path = target if target.startswith("/") else os.path.join(REPO, target)
    existed = os.path.exists(path)
    r = run("compare", "--model", TINY, "--variants", "fp32", "--output", path, "--force")
    assert_clean_error(r, EXIT_IO, path)
    assert os.path.exists(path) == existed
    assert glob.glob(path + ".tmp.*") == []


def test_sigint_during_a_run_leaves_no_output(tmp_path):
    out = tmp_path / "r.json"
    model = DEFAULT_MODEL if os.path.exists(DEFAULT_MODEL) else TINY
    text = tmp_path / "long.txt"
    with open(DEFAULT_TEXT, encoding="utf-8") as f:
        text.write_text(f.read() * 3, encoding="utf-8")
    proc = subprocess.Popen([BIN, "compare", "--model", model, "--text", str(text), "--variants", VARIANTS,
                             "--format", "json", "--output", str(out), "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    assert proc.poll() is None, "the run finished before it could be interrupted: give it more work"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0, stderr
    assert proc.returncode in (-signal.SIGINT, 128 + signal.SIGINT), (proc.returncode, stderr)
    for crash in ("terminate called", "Exception raised from", "frame #", "Segmentation"):
        assert crash not in stderr
    assert stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.txt"]  # neither r.json nor r.json.tmp.*
