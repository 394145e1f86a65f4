"""The data side of scripts/train_default_model.py: reST prose extraction and the objectives.

The reST sample is written here; expected outputs are written by hand.
"""

import numpy as np

from quantppl_tools import train as tdm

REST = """\
:mod:`functools` --- Higher-order functions
===========================================

.. module:: functools
   :synopsis: Higher-order functions and operations on callable objects.

.. _functools-intro:

The :mod:`functools` module is for **higher-order** functions: functions that act on
or return other functions, see :func:`~functools.lru_cache` and `PEP 8 <https://peps.example/pep-8>`_.

For example::

    @cache
    def factorial(n):
        return n * factorial(n - 1) if n else 1

>>> factorial(10)
3628800

.. function:: cache(user_function)
   :noindex:

   Simple lightweight unbounded function cache that is sometimes called memoize.

   .. code-block:: python

      print("this is code and must not appear")

   .. note::

      The cache is threadsafe so the wrapped function can be used in multiple threads.

+------------+------------+
| table cell | is dropped |
+------------+------------+

* A bulleted item keeps its words but loses the bullet marker here.
Too short.
"""


def test_extract_prose_keeps_prose_and_drops_code():
    pars = tdm.extract_prose(REST)
    assert pars == [
        "The functools module is for higher-order functions: functions that act on or return other "
        "functions, see lru_cache and PEP 8.",
        "Simple lightweight unbounded function cache that is sometimes called memoize.",
        "The cache is threadsafe so the wrapped function can be used in multiple threads.",
        "A bulleted item keeps its words but loses the bullet marker here. Too short.",
    ]
    text = "\n".join(pars)
    for gone in ("factorial", "print", "3628800", "table cell", "synopsis", "Higher-order functions\n",
                 ":func:", "``", "**", "https", "noindex", "==="):
        assert gone not in text, gone
    assert "For example:" not in pars  # the paragraph before a literal block has only 2 words: dropped


def test_span_corruption_round_trip():
    rng = np.random.default_rng(0)
    tokens = list(range(100, 227))  # 127 distinct tokens
    sentinels = [3031 - i for i in range(32)]
    inp, lab = tdm.span_corruption(tokens, rng, sentinels, eos=1)
    assert inp[-1] == 1 and lab[-1] == 1
    # Rebuild the text: each sentinel in the input is replaced by the tokens after it in the labels.
    spans, cur = {}, None
    for t in lab[:-1]:
        if t in sentinels:
            cur = t
            spans[cur] = []
        else:
            spans[cur].append(t)
    rebuilt = []
    for t in inp[:-1]:
        rebuilt.extend(spans[t] if t in sentinels else [t])
    assert rebuilt == tokens
    noise = sum(len(v) for v in spans.values())
    assert noise == round(0.15 * 127)
    assert list(spans) == sentinels[:len(spans)]  # <extra_id_0>, <extra_id_1>, ... in order
    assert len(spans) == round(noise / 3)


def test_prefix_lm_splits_the_window():
    rng = np.random.default_rng(1)
    tokens = list(range(10, 60))
    for _ in range(20):
        inp, lab = tdm.prefix_lm(tokens, rng, eos=1)
        assert inp[-1] == 1 and lab[-1] == 1
        assert inp[:-1] + lab[:-1] == tokens
        assert len(inp) >= 2 and len(lab) >= 2
