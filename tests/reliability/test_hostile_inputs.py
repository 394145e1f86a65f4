"""Hostile inputs (issue 20), end to end on the real binary: one generator per class.

- regex bombs finish under a time limit (RE2, linear time);
- /dev/zero-like inputs (devices, FIFOs, endless standard input, sparse files past the maximum)
  are refused before they are read, under an address-space limit;
- a tokenizer whose normalization expands a character 8000x, and a tokenizer of another model;
- outputs that are not regular files (a character device, a FIFO, symlinks to /proc/self/fd/1
  and dangling ones, all created inside the test's own directory) are never replaced;
- an output that is one of the inputs; a 250-byte file name; a missing TMPDIR;
- full-disk writes on a small tmpfs (needs root: skipped otherwise) leave no file behind;
- --threads far beyond the cores is capped with a warning and the JSON records what ran;
- a --check entry spelled canonically matches the short spelling; a NUL inside a message.

Each failure must be one line naming the file, flag or value, with the documented exit code
(docs/reliability.md). Run by CTest as part of `cli_reliability`.
"""

import hashlib
import io
import json
import os
import resource
import shutil
import stat
import subprocess
import threading
import time

import pytest

from cli.conftest import BIN, EXIT_DATA, EXIT_IO, EXIT_USAGE, FIXTURES, REPO, TINY

TINY_TOKENIZER = os.path.join(FIXTURES, "tiny.model")
DEFAULT_MODEL = os.path.join(REPO, "models", "default.pt")
DEFAULT_TEXT = os.path.join(REPO, "data", "default_eval.txt")

MIB = 1 << 20
# Stated maxima (include/quantppl/input_file.h, README "Limits").
MAX_TEXT, MAX_TOKENIZER, MAX_CHECK = 64 * MIB, 64 * MIB, 16 * MIB
MAX_THREADS_PER_CORE = 2  # src/cli/commands.h kMaxThreadsPerHardwareThread
# Address-space limit for the runs fed endless input: LibTorch, OpenBLAS and their thread stacks
# reserve ~1-2 GB of address space at start; reading /dev/zero would need all of it and more.
MEMORY_LIMIT = 4 << 30
TIME_LIMIT = 60  # seconds; a backtracking regex or a blocking FIFO open never finishes
CRASH_MARKERS = ("terminate called", "Exception raised from", "frame #", "Segmentation", "Aborted",
                 "AddressSanitizer", "runtime error:", "internal error")


def instrumented_with_asan(path):
    try:
        with open(path, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


# AddressSanitizer reserves terabytes of address space for its shadow memory at start, so under
# scripts/sanitize.sh the address-space limit is left off (the runs are still refused before any
# read: the exit code, message and time limit are checked all the same).
ASAN = instrumented_with_asan(BIN)


def limit_memory():
    if not ASAN:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run(*args, stdin=None, env=None, memory_limited=False, input_bytes=None):
    return subprocess.run([BIN, *args], stdin=stdin, input=input_bytes, capture_output=True,
                          timeout=TIME_LIMIT, env=env, preexec_fn=limit_memory if memory_limited else None)


def assert_clean_error(result, code, *needles):
    err = result.stderr.decode("utf-8", "replace").strip()
    assert result.returncode == code, (result.returncode, err)
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    for crash in CRASH_MARKERS:
        assert crash not in err, err
    assert result.stdout == b""
    return err


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# ---- regular expressions: linear time ----

@pytest.mark.parametrize("flag", ["--include", "--exclude"])
@pytest.mark.parametrize("bomb", ["(.*.*)*Z", "(a|aa)*$Z", "(x+x+)+y", "(" * 20000 + "zzz" + ")" * 20000],
                         ids=["dot-star-star", "alternation", "nested-plus", "nested-20000"])
def test_regex_bombs_finish(flag, bomb):
    start = time.monotonic()
    r = run("inspect", "--model", TINY, "--quiet", flag, bomb)
    elapsed = time.monotonic() - start
    if flag == "--include":  # matches no layer
        assert_clean_error(r, EXIT_USAGE, "no Linear layer is selected")
    else:  # excludes nothing
        assert r.returncode == 0, r.stderr
    assert elapsed < TIME_LIMIT


@pytest.mark.parametrize("pattern,needle", [
    ("(q)\\1", "invalid escape sequence"),         # backreference: not in RE2
    ("(?=q)", "invalid perl operator"),            # lookahead: not in RE2
    ("\\pL{1000}", "it needs more than the 8 MiB"),  # beyond the program-size bound
    ("((a{100}){100}){100}", "invalid repetition size"),
    ("[", "missing ]"),
])
def test_patterns_re2_rejects_are_usage_errors_naming_the_flag(pattern, needle):
    r = run("inspect", "--model", TINY, "--quiet", "--include", pattern)
    assert_clean_error(r, EXIT_USAGE, "--include", needle)


# ---- inputs: kinds and sizes checked first ----

@pytest.mark.parametrize("flag", ["--text", "--tokenizer", "--check"])
def test_character_devices_are_refused_before_reading(flag):
    r = run("compare", "--model", TINY, flag, "/dev/zero", memory_limited=True)
    assert_clean_error(r, EXIT_IO, "'/dev/zero' is a character device, expected a regular file")


@pytest.mark.parametrize("flag", ["--text", "--tokenizer", "--check"])
def test_fifos_are_refused_without_blocking(tmp_path, flag):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # no writer: opening it for reading would block forever
    r = run("compare", "--model", TINY, flag, str(fifo))
    assert_clean_error(r, EXIT_IO, f"'{fifo}' is a FIFO")


@pytest.mark.parametrize("flag,maximum", [("--text", MAX_TEXT), ("--tokenizer", MAX_TOKENIZER), ("--check", MAX_CHECK)])
def test_files_beyond_their_maximum_are_refused_from_their_size(tmp_path, flag, maximum):
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(maximum + 1)  # sparse: nothing is written
    r = run("compare", "--model", TINY, flag, str(big), memory_limited=True)
    assert_clean_error(r, EXIT_DATA, str(big), f"{maximum + 1} bytes, more than the {maximum >> 20} MiB maximum")


def test_zeros_on_standard_input_fail_at_the_first_byte():
    with open("/dev/zero", "rb") as zero:
        r = run("compare", "--model", TINY, "--text", "-", stdin=zero, memory_limited=True)
    assert_clean_error(r, EXIT_DATA, "<stdin>", "NUL byte at byte offset 0")


def test_endless_valid_text_on_standard_input_stops_at_the_maximum(tmp_path):
    out, err = open(tmp_path / "out", "wb+"), open(tmp_path / "err", "wb+")
    proc = subprocess.Popen([BIN, "compare", "--model", TINY, "--text", "-"], stdin=subprocess.PIPE,
                            stdout=out, stderr=err, preexec_fn=limit_memory)
    chunk = b"the river runs past the stone bridge\n" * 1000

    def feed():
        try:
            while True:  # endless: only quantppl's maximum ends it
                proc.stdin.write(chunk)
        except (BrokenPipeError, ValueError, OSError):
            pass

    threading.Thread(target=feed, daemon=True).start()
    try:
        proc.wait(timeout=TIME_LIMIT)
    finally:
        if proc.poll() is None:
            proc.kill()
    out.seek(0)
    err.seek(0)
    r = subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())
    assert_clean_error(r, EXIT_DATA, "<stdin> is longer than the 64 MiB maximum for a text")


def test_binary_text_fails_in_its_first_block(tmp_path):
    noise = tmp_path / "noise.bin"
    noise.write_bytes(b"valid start " + bytes([0xff]) + b"x" * (8 * MIB))
    r = run("compare", "--model", TINY, "--text", str(noise))
    assert_clean_error(r, EXIT_DATA, str(noise), "not valid UTF-8 at byte offset 12")


# ---- tokenizers ----

@pytest.fixture(scope="module")
def expanding_tokenizer(tmp_path_factory):
    """A valid sentencepiece model whose normalization rule turns 'Z' into 8000 'a's."""
    spm = pytest.importorskip("sentencepiece")
    d = tmp_path_factory.mktemp("tok")
    rule = d / "rule.tsv"
    rule.write_text("5A\t" + " ".join(["61"] * 8000) + "\n")
    lines = ["The river runs past the stone bridge and the north light falls on the cloud."] * 20
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=40,
                                   normalization_rule_tsv=str(rule), model_type="unigram", minloglevel=2,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False)
    # The generator is what it claims: Python's sentencepiece expands one 'Z' into 8000 pieces' worth.
    assert len(spm.SentencePieceProcessor(model_proto=model.getvalue()).encode("Z")) > 4000
    path = d / "expanding.model"
    path.write_bytes(model.getvalue())
    return path


def test_a_tokenizer_that_expands_each_character_is_refused(expanding_tokenizer):
    r = run("compare", "--model", TINY, "--tokenizer", str(expanding_tokenizer), memory_limited=True)
    assert_clean_error(r, EXIT_DATA, str(expanding_tokenizer), "produces 8000 bytes, more than the 64")


def test_a_tokenizer_of_another_model_is_refused_naming_both_files():
    if not os.path.exists(DEFAULT_MODEL):
        pytest.skip("no models/default.pt")
    # tiny.model (300 pieces) fits within default.pt's vocabulary, so only the vocabulary check sees it.
    r = run("inspect", "--model", DEFAULT_MODEL, "--tokenizer", TINY_TOKENIZER, "--quiet")
    assert_clean_error(r, EXIT_DATA, f"tokenizer '{TINY_TOKENIZER}' does not belong to this model",
                       f"model '{DEFAULT_MODEL}': tokenizer.model has 3000")


def test_the_models_own_tokenizer_is_accepted_as_an_override():
    r = run("inspect", "--model", TINY, "--tokenizer", TINY_TOKENIZER, "--quiet", "--format", "json")
    assert r.returncode == 0, r.stderr


# ---- outputs: only regular files are replaced ----

def output_commands(out):
    """Every write path, with its output flag pointing at `out`."""
    return {
        "compare": ["compare", "--model", TINY, "--variants", "fp32", "--quiet", "-o", out],
        "inspect": ["inspect", "--model", TINY, "--quiet", "-o", out],
        "sensitivity": ["sensitivity", "--model", TINY, "--variant", "absmax:8", "--max-tokens", "64", "--quiet",
                        "-o", out],
        "quantize": ["quantize", "--model", TINY, "--variant", "absmax:8", "--output", out],
        "packed": ["quantize", "--model", TINY, "--variant", "absmax:8", "--packed", out],
    }


COMMANDS = ["compare", "inspect", "sensitivity", "quantize", "packed"]


def make_special(tmp_path, kind):
    out = tmp_path / kind
    if kind == "chardev":
        try:
            os.mknod(out, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a /dev/null of our own
        except PermissionError:
            pytest.skip("mknod needs root")
        return out, "a character device"
    if kind == "fifo":
        os.mkfifo(out)
        return out, "a FIFO"
    if kind == "stdout_link":
        os.symlink("/proc/self/fd/1", out)
        return out, "a symbolic link to '/proc/self/fd/1'"
    if kind == "dangling_link":
        os.symlink(tmp_path / "nowhere", out)
        return out, "a symbolic link (dangling)"
    if kind == "file_link":
        (tmp_path / "real.json").write_text("keep")
        os.symlink(tmp_path / "real.json", out)
        return out, "a symbolic link to"
    raise AssertionError(kind)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("kind", ["chardev", "fifo", "stdout_link", "dangling_link", "file_link"])
@pytest.mark.parametrize("force", [False, True])
def test_non_regular_outputs_are_never_replaced(tmp_path, command, kind, force):
    out, description = make_special(tmp_path, kind)
    before = sorted(p.name for p in tmp_path.iterdir())
    mode = os.lstat(out).st_mode
    args = output_commands(str(out))[command] + (["--force"] if force else [])
    r = run(*args)
    assert_clean_error(r, EXIT_IO, f"cannot write '{out}': it is {description}", "only a regular file")
    assert os.lstat(out).st_mode == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary file left
    if kind == "file_link":
        assert (tmp_path / "real.json").read_text() == "keep"


def test_an_output_that_is_the_packed_source_is_refused(tmp_path):
    model = tmp_path / "m.pt"
    shutil.copy(TINY, model)
    digest = sha256(model)
    r = run("quantize", "--model", str(model), "--variant", "absmax:8", "--packed", str(model), "--no-embed", "--force")
    assert_clean_error(r, EXIT_USAGE, f"cannot write '{model}': it is the input '{model}'")
    assert sha256(model) == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


@pytest.mark.parametrize("how", ["same", "hardlink", "symlink", "dotted"])
def test_an_output_that_is_an_input_is_refused(tmp_path, how):
    model = tmp_path / "m.pt"
    shutil.copy(TINY, model)
    text = tmp_path / "t.txt"
    shutil.copy(DEFAULT_TEXT, text)
    target = {"same": model, "hardlink": tmp_path / "hard.pt", "symlink": tmp_path / "sym.pt",
              "dotted": tmp_path / "." / "m.pt"}[how]
    if how == "hardlink":
        os.link(model, target)
    if how == "symlink":
        os.symlink(model, target)
    digest = sha256(model)
    for args in (["quantize", "--model", str(model), "--variant", "absmax:8", "--output", str(target)],
                 ["inspect", "--model", str(model), "--quiet", "-o", str(target)]):
        assert_clean_error(run(*args, "--force"), EXIT_USAGE, "it is the input")
    assert sha256(model) == digest
    r = run("compare", "--model", TINY, "--text", str(text), "--variants", "fp32", "-o", str(text), "--force")
    assert_clean_error(r, EXIT_USAGE, f"it is the input '{text}'")


def test_a_250_byte_file_name_is_written(tmp_path):
    out = tmp_path / ("r" * 245 + ".json")
    for force in ([], ["--force"]):  # create, then replace
        r = run("inspect", "--model", TINY, "--quiet", "--format", "json", "-o", str(out), *force)
        assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["layers"]
    assert [p.name for p in tmp_path.iterdir()] == [out.name]
    r = run("inspect", "--model", TINY, "--quiet", "-o", str(tmp_path / ("r" * 256)))
    assert_clean_error(r, EXIT_IO, "file name is 256 bytes")


def test_a_missing_tmpdir_is_one_io_error(tmp_path):
    packed = tmp_path / "m.qpack"
    assert run("quantize", "--model", TINY, "--variant", "absmax:8", "--packed", str(packed)).returncode == 0
    env = dict(os.environ, TMPDIR=str(tmp_path / "gone"))
    r = run("compare", "--model", str(packed), "--variants", "fp32", "--quiet", env=env)
    assert_clean_error(r, EXIT_IO, f"TMPDIR '{tmp_path / 'gone'}' is not a usable directory")
    r = run("compare", "--model", TINY, "--variants", "absmax:8", "--backup", "file", "--quiet", env=env)
    assert_clean_error(r, EXIT_IO, "TMPDIR", "--backup memory")


# ---- full disk ----

@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root): " + r.stderr.strip())
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_full_disk_is_an_io_error_leaving_nothing(small_tmpfs, command):
    if command in ("compare", "inspect", "sensitivity"):
        # Results are small: fill the file system first so that their few kilobytes do not fit.
        with open(small_tmpfs / "filler", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass
    before = sorted(p.name for p in small_tmpfs.iterdir())
    out = small_tmpfs / ("out.pt" if command in ("quantize", "packed") else "out.json")
    r = run(*output_commands(str(out))[command])
    # tiny.pt is 3.8 MB: neither the model nor the .qpack fits in 1 MiB.
    err = assert_clean_error(r, EXIT_IO, f"'{out}'")
    assert "No space left on device" in err or "does not accept new files" in err, err
    assert sorted(p.name for p in small_tmpfs.iterdir()) == before


def test_a_full_standard_output_is_an_io_error():
    with open("/dev/full", "wb") as full:
        r = subprocess.run([BIN, "inspect", "--model", TINY, "--quiet"], stdout=full, stderr=subprocess.PIPE,
                           timeout=TIME_LIMIT)
    assert r.returncode == EXIT_IO, r.stderr
    assert b"cannot write the result to standard output: No space left on device" in r.stderr


# ---- threads ----

@pytest.mark.parametrize("threads", ["1000", "9223372036854775807"])
def test_threads_beyond_the_cores_are_capped_and_recorded(threads):
    r = run("compare", "--model", TINY, "--variants", "fp32", "--format", "json", "--quiet", "--threads", threads)
    assert r.returncode == 0, r.stderr
    cap = MAX_THREADS_PER_CORE * os.cpu_count()
    assert json.loads(r.stdout)["threads"] == cap
    err = r.stderr.decode()
    assert f"--threads {threads} is more than" in err and f"using {cap}" in err, err


# ---- error kinds ----

def test_a_canonically_spelled_check_entry_matches(tmp_path):
    r = run("compare", "--model", TINY, "--variants", "absmax:8", "--format", "json", "--quiet")
    assert r.returncode == 0, r.stderr
    ppl = json.loads(r.stdout)["results"][0]["ppl"]
    check = tmp_path / "check.json"
    check.write_text(json.dumps({"variants": [{"variant": "absmax:8:tensor:minmax", "ppl": ppl}]}))
    r = run("compare", "--model", TINY, "--variants", "absmax:8", "--quiet", "--check", str(check))
    assert r.returncode == 0, r.stderr
    assert b"check passed" in r.stderr


def test_a_nul_inside_a_message_is_shown_not_cut(tmp_path):
    check = tmp_path / "check.json"
    check.write_text(json.dumps({"variants": [{"variant": "abs\u0000max:8", "ppl": 10.0}]}))
    r = run("compare", "--model", TINY, "--quiet", "--check", str(check))
    assert_clean_error(r, EXIT_USAGE, "invalid variant 'abs\\0max:8': unknown scheme 'abs\\0max'")


def test_a_non_contiguous_weight_is_a_data_error_naming_the_file_and_layer(tmp_path):
    torch = pytest.importorskip("torch")
    extra = {"quantppl.json": "", "tokenizer.model": ""}
    module = torch.jit.load(TINY, _extra_files=extra)
    name = "decoder.block.0.layer.0.SelfAttention.q.weight"
    with torch.no_grad():
        weight = dict(module.named_parameters())[name]
        transposed = weight.detach().t().contiguous().t()  # same values, column-major storage
        assert not transposed.is_contiguous()
        weight.data = transposed  # the module's own parameter now has column-major strides
    path = tmp_path / "strided.pt"
    torch.jit.save(module, str(path), _extra_files=extra)
    reloaded = dict(torch.jit.load(str(path)).named_parameters())[name]
    if reloaded.is_contiguous():
        pytest.skip("this torch saves parameters contiguous")
    r = run("inspect", "--model", str(path), "--quiet")
    assert_clean_error(r, EXIT_DATA, str(path), "decoder.block.0.layer.0.SelfAttention.q", "non-contiguous")
