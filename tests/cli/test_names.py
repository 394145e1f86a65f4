"""Names once: the CLI's choices come from the library's name tables, and shared flags are declared once.

--help lists every enum flag's choices; an unknown name is a usage error (exit 2) naming the flag and
listing the choices; the shared flags carry the same help text in every subcommand; the ARITH field
of a variant spec reaches reports and .qpack headers.

Run like tests/cli/test_cli.py, with QUANTPPL_BIN and QUANTPPL_FIXTURES in the environment.
"""

import json
import re
import struct

import pytest

from .conftest import EXIT_USAGE, TINY, run


# The tables' names, written here independently of the code under test.
CHOICES = {
    "--format": ["table", "json", "csv"],
    "--mode": ["reconstruct", "prefix", "causal", "llamacpp"],
    "--backup": ["auto", "memory", "file", "model"],
}
ENUM_FLAGS = {
    "compare": ["--format", "--mode", "--backup"],
    "sensitivity": ["--format", "--mode"],
    "inspect": ["--format"],
}
SHARED_FLAGS = ["--model", "--tokenizer", "--text", "--format", "--output", "--force", "--include", "--exclude",
                "--threads", "--quiet"]
COMMANDS = ["compare", "quantize", "inspect", "sensitivity"]


def assert_usage_error(result, *needles):
    assert result.returncode == EXIT_USAGE, (result.returncode, result.stderr)
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    assert result.stdout == ""


def help_lines(command):
    """{flag: its help line} from `quantppl COMMAND --help` (CLI11 prints one line per option)."""
    r = run(command, "--help")
    assert r.returncode == 0, r.stderr
    lines, flag = {}, None
    for line in r.stdout.splitlines():
        m = re.match(r"\s+(?:-\w,)?(--[\w-]+)", line)
        if m:
            flag = m.group(1)
            lines[flag] = line.strip()
        elif flag and line.startswith(" " * 20):  # a long option's description, on the next line
            lines[flag] += " " + line.strip()
        else:
            flag = None
    return lines


@pytest.mark.parametrize("command", sorted(ENUM_FLAGS))
def test_help_lists_every_choice_of_every_enum_flag(command):
    lines = help_lines(command)
    for flag in ENUM_FLAGS[command]:
        assert "{" + ",".join(CHOICES[flag]) + "}" in lines[flag], lines[flag]


def test_help_shows_the_enum_defaults_by_name():
    lines = help_lines("compare")
    assert "}=table" in lines["--format"] and "}=reconstruct" in lines["--mode"] and "}=auto" in lines["--backup"]


@pytest.mark.parametrize("command,flag", [(c, f) for c in sorted(ENUM_FLAGS) for f in ENUM_FLAGS[c]])
@pytest.mark.parametrize("bad", ["xml", "JSON", "0", ""])
def test_unknown_choice_is_a_usage_error_naming_flag_and_choices(command, flag, bad):
    # A number is not a name either (CLI11 would otherwise accept an enum's integer).
    extra = ["--variant", "absmax:8"] if command == "sensitivity" else []
    r = run(command, "--model", TINY, *extra, flag, bad)
    choices = CHOICES[flag]
    assert_usage_error(r, flag, f"'{bad}'", ", ".join(choices[:-1]) + " or " + choices[-1])


def test_shared_flags_have_one_help_text():
    by_command = {c: help_lines(c) for c in COMMANDS}
    for flag in SHARED_FLAGS:
        texts = {c: lines[flag] for c, lines in by_command.items() if flag in lines}
        assert len(texts) >= 2, flag
        assert len(set(texts.values())) == 1, texts


def test_every_command_shows_the_variant_grammar_with_arith():
    for command in COMMANDS:
        r = run(command, "--help")
        assert "SCHEME:BITS[:GRANULARITY[:RANGE[:ARITH]]]" in r.stdout, command
        assert "ARITH numpy|tutorial" in r.stdout, command


def test_unknown_arithmetic_is_a_usage_error():
    r = run("compare", "--model", TINY, "--variants", "absmax:8:tensor:minmax:numpy2")
    assert_usage_error(r, "unknown arithmetic 'numpy2'", "numpy or tutorial")


def test_each_format_name_renders():
    out = {}
    for fmt in CHOICES["--format"]:
        r = run("compare", "--model", TINY, "--variants", "fp32", "--max-length", "16", "--quiet", "--format", fmt)
        assert r.returncode == 0, r.stderr
        out[fmt] = r.stdout
    json.loads(out["json"])
    assert out["csv"].startswith("variant,")
    assert out["table"] != out["csv"] and not out["table"].startswith("{")


def test_tutorial_variant_keeps_its_name_in_reports():
    specs = "fp32,zeropoint:4:tensor:minmax:tutorial,zeropoint:4:tensor:minmax:numpy,zeropoint:4"
    r = run("compare", "--model", TINY, "--variants", specs, "--max-length", "32", "--quiet", "--format", "json")
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)["results"]
    assert [x["variant"] for x in results] == specs.split(",")
    # Spelling out the default arithmetic changes nothing; the tutorial's differs in the last bits only.
    assert results[2]["nll"] == results[3]["nll"]
    assert results[1]["ppl"] == pytest.approx(results[3]["ppl"], rel=1e-2)


def test_packed_tutorial_variant_records_its_arithmetic(tmp_path):
    out = tmp_path / "t.qpack"
    r = run("quantize", "--model", TINY, "--variant", "absmax:4:channel:minmax:tutorial", "--packed", str(out))
    assert r.returncode == 0, r.stderr
    data = out.read_bytes()
    (length,) = struct.unpack_from("<Q", data, 16)
    h = json.loads(data[88:88 + length])
    assert h["variant"] == "absmax:4:channel:minmax:tutorial"
    assert h["weight_format"] == "absmax:4:channel:minmax:tutorial"
    # Evaluating the .qpack equals evaluating the variant on the original (bit-identical weights).
    a = run("compare", "--model", str(out), "--variants", "fp32", "--max-length", "32", "--quiet", "--format", "json")
    b = run("compare", "--model", TINY, "--variants", "absmax:4:channel:minmax:tutorial", "--max-length", "32",
            "--quiet", "--format", "json")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert json.loads(a.stdout)["results"][0]["nll"] == json.loads(b.stdout)["results"][-1]["nll"]
