"""llama.cpp's `llama-perplexity` loop, re-implemented in Python from its source
(tools/perplexity/perplexity.cpp, function perplexity()) as an independent reference for
`quantppl compare --mode llamacpp`. Read, not copied; only what decides the numbers is kept
(no KV cache, no batching across sequences, which do not change the logits).

  tokens   = the whole text tokenized once, with BOS in front when the model adds BOS
  n_ctx    = the context (quantppl: --max-length)
  refuse   if len(tokens) < 2 * n_ctx
  n_chunk  = len(tokens) // n_ctx             (the remainder is dropped)
  first    = n_ctx // 2
  chunk i  = tokens[i*n_ctx : (i+1)*n_ctx], its first token replaced by BOS when add_bos
  scored   : logits at positions first .. n_ctx-2 against the tokens at first+1 .. n_ctx-1,
             log_softmax in float with the sum of exp in double (log_softmax() there),
             nll and nll^2 summed in double, count += n_ctx - first - 1
  final    : nll /= count; nll2 /= count; ppl = exp(nll); nll2 -= nll^2;
             stderr = sqrt(nll2 / (count - 1)) * ppl    ("PPL = %.4lf +/- %.5lf")

usage: python3 llamacpp_perplexity.py MODEL.pt TOKENS.json N_CTX ADD_BOS(0|1) BOS_ID
       (TOKENS.json: the text's ids WITHOUT BOS; printed: JSON {ppl, ppl_stderr, count, n_chunk})
"""

import json
import math
import sys

import torch


def llamacpp_perplexity(forward, text_ids, n_ctx, add_bos, bos_id):
    """`forward(ids [1, n]) -> logits [1, n, V]`; returns (ppl, ppl_stderr, count, n_chunk)."""
    tokens = ([bos_id] if add_bos else []) + list(text_ids)
    if len(tokens) < 2 * n_ctx:
        raise ValueError(f"you need at least {2 * n_ctx} tokens to evaluate perplexity with a context of {n_ctx}")
    n_chunk = len(tokens) // n_ctx
    first = n_ctx // 2
    nll = 0.0
    nll2 = 0.0
    count = 0
    for i in range(n_chunk):
        start = i * n_ctx
        chunk = tokens[start:start + n_ctx]
        if add_bos:
            chunk = [bos_id] + chunk[1:]
        logits = forward(torch.tensor([chunk], dtype=torch.long))[0].to(torch.float64)
        for j in range(first, n_ctx - 1):
            row = logits[j]
            # log_softmax(): logit[tok] - max - log(sum exp(logit - max))
            m = row.max()
            lp = float(row[chunk[j + 1]] - m - torch.log(torch.exp(row - m).sum()))
            nll += -lp
            nll2 += lp * lp
        count += n_ctx - first - 1
    nll2 /= count
    nll /= count
    ppl = math.exp(nll)
    nll2 -= nll * nll
    stderr = math.sqrt(nll2 / (count - 1)) * ppl if nll2 > 0 else float("nan")
    return ppl, stderr, count, n_chunk


def main():
    model_path, tokens_path, n_ctx, add_bos, bos_id = sys.argv[1:6]
    module = torch.jit.load(model_path)
    with open(tokens_path, encoding="utf-8") as f:
        ids = json.load(f)

    def forward(batch):
        with torch.no_grad():
            return module(batch, torch.ones_like(batch))

    ppl, stderr, count, n_chunk = llamacpp_perplexity(forward, ids, int(n_ctx), add_bos == "1", int(bos_id))
    print(json.dumps({"ppl": ppl, "ppl_stderr": stderr, "count": count, "n_chunk": n_chunk}))


if __name__ == "__main__":
    main()
