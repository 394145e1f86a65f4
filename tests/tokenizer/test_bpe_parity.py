"""Byte-level BPE parity: quantppl's ids equal Hugging Face tokenizers' ids.

Nothing is downloaded. Each test trains a small byte-level BPE with the `tokenizers` library
(the venv's pinned release), configured exactly like a model family's tokenizer.json
(GPT-2: ByteLevel with its regex; Qwen2: NFC + a Split regex with single digits + ByteLevel
without regex; Llama-3: a Split regex with 1-3 digit groups + ByteLevel, ignore_merges), saves
tokenizer.json, and compares tokenizers' encode(text, add_special_tokens=False).ids with what
quantppl's Tokenizer (through tests/tokenizer/tokenize_driver.cpp) gives, on a multilingual text
and on texts with special tokens inside.

Run: QUANTPPL_TOKENIZE_DRIVER=build/quantppl_tokenize_driver build/venv/bin/python -m pytest tests/tokenizer
"""

import json
import os
import subprocess

import pytest

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRIVER = os.environ.get("QUANTPPL_TOKENIZE_DRIVER", os.path.join(REPO, "build", "quantppl_tokenize_driver"))

# The families' pre-tokenizer regexes, as in their published tokenizer.json files.
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+")

# The multilingual text: scripts, emoji (ZWJ sequences, skin tones, flags, variation selectors),
# digits and long digit runs, whitespace runs, tabs, CR/LF, code, contractions in both cases,
# and characters NFC changes (a decomposed é, the Angstrom sign, decomposed Hangul).
MULTILINGUAL = "\n".join([
    "The quick brown fox jumps over the lazy dog. Don't stop: it's what they're doing, we've won, I'm sure, you'll see, he'd go.",
    "DON'T SHOUT, IT'S LOUD; THEY'RE HERE, WE'VE GOT IT, I'M IN, YOU'LL SEE, HE'D KNOW.",
    "Größe, Straße und übermäßig viele Äpfel: Schöne Grüße aus München!",
    "Où est l'élève ? C'est l'été, ça va très bien, déjà vu — « guillemets ».",
    "我们在北京学习中文。机器学习和自然语言处理很有意思！",
    "こんにちは、世界！カタカナとひらがな、漢字も使います。",
    "مرحبا بالعالم، هذه جملة عربية للاختبار.",
    "Привет, мир! Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Emoji: 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 😀😃😄 ❤️ 🇩🇪🇫🇷 👩🏿‍💻 🧑‍🤝‍🧑",
    "Digits: 1234567890 3.14159 2024-01-01 100000000000000000000 007 ١٢٣ ４２",
    "Whitespace:    four spaces,\ttab,\t\ttwo tabs,  \n\n\nthree newlines\r\nCRLF   \n  trailing   ",
    "Code: def f(x):\n    return x**2 + y[0]  # comment\nif (a && b || !c) { return -1; } // done\n"
    "    for (int i = 0; i < n; ++i) sum += a[i] * b[i];\n\tprint(f\"{value!r:>10}\")",
    "NFC: e\u0301te\u0301 \u212b ha\u0300\u0301 \u1100\u1161\u11a8 \uff21\uff22 \ufb01 ſ \u212a",
    "Odd spaces:\u00a0nbsp\u3000ideographic\u2028line-sep\u2003em \u200bzwsp",
    "Punctuation runs!!! ??? ... --- *** $$$ @@@ ### %%% ^^^ &&& ((( ))) [[[ ]]] {{{ }}} <<< >>>",
    "'s 't 're 've 'm 'll 'd 'S 'T 'RE x's y't",
])

SENTENCES = [MULTILINGUAL] + [
    "Machine learning models compress text into tokens before they predict the next one.",
    "Die Quantisierung reduziert die Genauigkeit der Gewichte auf wenige Bits.",
    "La quantification réduit la précision des poids à quelques bits.",
    "量化把权重的精度降低到几个比特。日本語のテキストも少し入れます。",
    "Квантование уменьшает точность весов до нескольких бит.",
    "def main():\n    for i in range(10):\n        print(i, i ** 2)\n",
    "يتعلم النموذج من النصوص الكثيرة.",
]


def corpus():
    # Enough repetition for a few hundred merges in every script of the text.
    return SENTENCES * 20


def train(tok, specials, vocab_size=1200):
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=specials)
    tok.train_from_iterator(corpus(), trainer)
    return tok


def gpt2_style():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    train(tok, [AddedToken("<|endoftext|>", special=True, normalized=True)])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def qwen2_style():
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    train(tok, [AddedToken(t, special=True, normalized=False) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def llama3_style():
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    specials += ["<|reserved_special_token_%d|>" % i for i in range(4)]
    train(tok, [AddedToken(t, special=True, normalized=False) for t in specials])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)]),
    ])
    return tok


def flags_style():
    """Not a real family: the other pre-tokenizer and added-token options tokenizers has."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(" ", behavior="merged_with_next"),
        pre_tokenizers.Split(Regex(r"\p{N}+"), behavior="merged_with_previous"),
        pre_tokenizers.Split(Regex(r"[,.;]"), behavior="contiguous", invert=True),
        pre_tokenizers.Split(Regex(r"!"), behavior="removed"),
        pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    train(tok, ["<s>", "</s>"], vocab_size=900)
    tok.add_tokens([AddedToken("<mask>", lstrip=True, rstrip=True, normalized=False, special=False),
                    AddedToken("[W]", single_word=True, normalized=True, special=False),
                    AddedToken("ﬁx", normalized=True, special=False)])
    tok.add_special_tokens([AddedToken("<sep>", rstrip=True, normalized=False, special=True)])
    return tok


FAMILIES = {"gpt2": gpt2_style, "qwen2": qwen2_style, "llama3": llama3_style, "flags": flags_style}

SPECIAL_TEXTS = {
    "gpt2": ["Hello<|endoftext|>World", "<|endoftext|><|endoftext|> two", "a <|endoftext|> b\n<|endoftext|>"],
    "qwen2": ["<|im_start|>user\nWie geht's? 你好<|im_end|>\n<|im_start|>assistant\n", "x<|endoftext|>y",
              "<|im_start|><|im_end|>", "<|im_start"],
    "llama3": ["<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi 12345<|eot_id|>",
               "a<|reserved_special_token_3|>b <|end_of_text|>", "<|begin_of_text|"],
    "flags": ["fill the <mask>  here", "x<mask>y", "  <mask>", "[W] word [W]x x[W] [W]", "ﬁx fix ﬁxed",
              "one<sep>   two", "1, 2; 3. four!five 12 34 five6"],
}


def driver_ids(tokenizer_path, texts, tmp_path):
    texts_path = tmp_path / "texts.json"
    texts_path.write_text(json.dumps(texts), encoding="utf-8")
    done = subprocess.run([DRIVER, str(tokenizer_path), str(texts_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    if not os.path.exists(DRIVER):
        pytest.fail("no driver at %s: build target quantppl_tokenize_driver or set QUANTPPL_TOKENIZE_DRIVER" % DRIVER)
    tok = FAMILIES[request.param]()
    path = tmp_path_factory.mktemp(request.param) / "tokenizer.json"
    tok.save(str(path))
    return request.param, tok, path


def test_ids_equal_tokenizers(family, tmp_path):
    name, tok, path = family
    texts = SENTENCES + SPECIAL_TEXTS[name] + ["", " ", "\n", "x", "  leading", "trailing  ", "🙂"]
    got = driver_ids(path, texts, tmp_path)
    assert got["kind"] == "bpe"
    assert got["piece_count"] == tok.get_vocab_size(with_added_tokens=True)
    for text, ids in zip(texts, got["ids"]):
        expected = tok.encode(text, add_special_tokens=False).ids
        assert ids == expected, "text %r" % text[:80]
    # The multilingual text really uses merges and every kind of content (not one id per byte).
    assert len(got["ids"][0]) < len(MULTILINGUAL.encode("utf-8")) * 0.8


def test_bos_from_post_processor(family, tmp_path):
    name, tok, path = family
    got = driver_ids(path, ["x"], tmp_path)
    with_specials = tok.encode("x", add_special_tokens=True).ids
    without = tok.encode("x", add_special_tokens=False).ids
    expected_bos = with_specials[0] if len(with_specials) == len(without) + 1 else None
    assert got["bos_id"] == expected_bos
    assert (expected_bos is not None) == (name == "llama3")


def test_long_text_one_call(family, tmp_path):
    """~100k characters in one call: the same ids as tokenizers (and quick: see bench notes)."""
    name, tok, path = family
    text = (MULTILINGUAL + "\n") * 100
    assert len(text) > 100_000
    got = driver_ids(path, [text], tmp_path)
    assert got["ids"][0] == tok.encode(text, add_special_tokens=False).ids


def test_ignore_merges_matters(tmp_path):
    """Words put in the vocabulary without a merge path: with ignore_merges they are one id."""
    tok = llama3_style()
    doc = json.loads(tok.to_str())
    vocab = doc["model"]["vocab"]
    words = ["Ġquantization", "Ġunmergeable", "Ġnext"]
    for w in words:
        if w not in vocab:
            vocab[w] = max(max(vocab.values()), max(t["id"] for t in doc["added_tokens"])) + 1
    texts = [" quantization next unmergeable", "a quantization"]
    results = {}
    for ignore in (True, False):
        doc["model"]["ignore_merges"] = ignore
        path = tmp_path / ("ignore_%s.json" % ignore)
        path.write_text(json.dumps(doc), encoding="utf-8")
        ref = Tokenizer.from_file(str(path))
        got = driver_ids(path, texts, tmp_path)
        expected = [ref.encode(t, add_special_tokens=False).ids for t in texts]
        assert got["ids"] == expected
        results[ignore] = expected
    assert results[True] != results[False]  # the flag changed the reference ids: the test can fail


def test_string_merges_form(tmp_path):
    """The older "a b" form of merges gives the same ids as the [a, b] form."""
    tok = gpt2_style()
    doc = json.loads(tok.to_str())
    assert isinstance(doc["model"]["merges"][0], list)
    doc["model"]["merges"] = [" ".join(m) for m in doc["model"]["merges"]]
    path = tmp_path / "legacy.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    ref = Tokenizer.from_file(str(path))
    got = driver_ids(path, SENTENCES, tmp_path)
    assert got["ids"] == [ref.encode(t, add_special_tokens=False).ids for t in SENTENCES]


@pytest.mark.parametrize("edit,message", [
    (lambda d: d["model"].update(type="WordPiece"), "model type \"WordPiece\""),
    (lambda d: d.update(normalizer={"type": "Lowercase"}), "normalizer type \"Lowercase\""),
    (lambda d: d.update(pre_tokenizer={"type": "Metaspace", "replacement": "▁"}), "pre-tokenizer type \"Metaspace\""),
    (lambda d: d.update(decoder={"type": "WordPiece"}), "decoder type \"WordPiece\""),
    (lambda d: d.update(post_processor={"type": "BertProcessing"}), "post-processor type \"BertProcessing\""),
    (lambda d: d["model"].update(dropout=0.1), "BPE dropout"),
])
def test_unsupported_feature_is_named(edit, message, tmp_path):
    doc = json.loads(gpt2_style().to_str())
    edit(doc)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    texts_path = tmp_path / "texts.json"
    texts_path.write_text("[]")
    done = subprocess.run([DRIVER, str(path), str(texts_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert message in done.stderr
    assert str(path) in done.stderr


def gpt2_byte_map():
    """openai/gpt-2 encoder.py bytes_to_unicode, written out again here (independent of the C++)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def random_merges(seed, n_merges=3000):
    """A vocabulary grown by merging random adjacent pairs of the text's words (BPE training with a
    random choice instead of the most frequent pair), plus some pairs of random tokens: merge ranks
    in an order no trainer would give, to exercise the merge loop."""
    import random
    rng = random.Random(seed)
    byte_map = gpt2_byte_map()
    vocab = {byte_map[b]: b for b in range(256)}
    words = [[byte_map[b] for b in (" " + w).encode("utf-8")] for w in " ".join(SENTENCES).split()]
    merges, seen = [], set()
    while len(merges) < n_merges:
        if rng.random() < 0.8:
            w = rng.choice(words)
            if len(w) < 2:
                continue
            i = rng.randrange(len(w) - 1)
            a, b = w[i], w[i + 1]
        else:
            tokens = list(vocab)
            a, b = rng.choice(tokens), rng.choice(tokens)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        merges.append([a, b])
        vocab.setdefault(a + b, len(vocab))
        for w in words:  # apply the merge, leftmost first, as BPE would
            j = 0
            while j < len(w) - 1:
                if w[j] == a and w[j + 1] == b:
                    w[j:j + 2] = [a + b]
                j += 1
    return vocab, merges


@pytest.mark.parametrize("base,seed", [("gpt2", 1), ("gpt2", 2), ("llama3", 3), ("qwen2", 4)])
def test_random_merge_orders_equal_tokenizers(base, seed, tmp_path):
    doc = json.loads(FAMILIES[base]().to_str())
    vocab, merges = random_merges(seed)
    doc["model"]["vocab"], doc["model"]["merges"] = vocab, merges
    doc["added_tokens"] = []
    doc["post_processor"] = None
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    ref = Tokenizer.from_file(str(path))
    got = driver_ids(path, SENTENCES, tmp_path)
    expected = [ref.encode(t, add_special_tokens=False).ids for t in SENTENCES]
    assert got["ids"] == expected
    assert sum(map(len, expected)) < 0.6 * sum(len(t.encode("utf-8")) for t in SENTENCES)  # merges applied


def test_every_code_point(family, tmp_path):
    """Each code point (to U+323AF) between letters, between digits and between spaces: the regex
    engines' Unicode classes (\\p{L}, \\p{N}, \\s, case folding) and NFC agree everywhere. (Not for
    the NFKC file: tokenizers' NFKC tables predate Unicode 12, ICU's do not; docs/tokenizers.md.)"""
    name, tok, path = family
    if name == "flags":
        pytest.skip("NFKC: Unicode versions differ for 134 compatibility characters")
    cps = [c for c in range(1, 0x323B0) if not 0xD800 <= c < 0xE000]
    per_text = 500
    texts = ["\n".join("a%sb 1%s2 %s x" % (chr(c), chr(c), chr(c)) for c in cps[i:i + per_text])
             for i in range(0, len(cps), per_text)]
    got = driver_ids(path, texts, tmp_path)["ids"]
    expected = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    differ = [hex(cps[i * per_text]) for i in range(len(texts)) if got[i] != expected[i]]
    assert differ == [], "texts starting at these code points differ"
