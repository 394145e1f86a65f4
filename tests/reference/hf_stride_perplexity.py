"""The Hugging Face perplexity guide's sliding-window loop ("Perplexity of fixed-length models",
transformers docs), re-implemented as an independent reference for
`quantppl compare --mode causal --stride N`.

The guide's loop, with `model(input_ids, labels=target_ids).loss` spelled out (transformers'
causal-LM loss: logits[:, :-1] against labels[:, 1:], cross-entropy averaged over labels that are
not -100):

    prev_end_loc = 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        input_ids = encodings[begin_loc:end_loc]
        target_ids = input_ids.clone(); target_ids[:-trg_len] = -100
        loss = mean cross-entropy of the shifted labels that are not -100
        ...
        prev_end_loc = end_loc
        if end_loc == seq_len: break

The guide then weights each window's loss by num_valid_tokens - 1 ("subtract batch_size due to
internal label shift"); that is exact for the first window but one short for every later window
when stride < max_length, whose first valid label is not lost to the shift. Both are returned:
`ppl` with the exact number of labels each loss averaged (quantppl's definition: every scored
token counted once) and `ppl_guide_weights` with the guide's weights.

usage: python3 hf_stride_perplexity.py MODEL.pt TOKENS.json MAX_LENGTH STRIDE ADD_BOS(0|1) BOS_ID
"""

import json
import math
import sys

import torch
import torch.nn.functional as F


def hf_stride_perplexity(forward, encodings, max_length, stride):
    seq_len = len(encodings)
    ids = torch.tensor(encodings, dtype=torch.long)
    nll_sum = 0.0
    n_tokens = 0
    guide_sum = 0.0
    guide_tokens = 0
    prev_end_loc = 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        input_ids = ids[begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:-trg_len] = -100
        logits = forward(input_ids[None])[0]
        shift_logits = logits[:-1].to(torch.float64)
        shift_labels = target_ids[1:]
        n_scored = int((shift_labels != -100).sum())
        if n_scored > 0:
            loss = float(F.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="mean"))
            nll_sum += loss * n_scored
            n_tokens += n_scored
            num_loss_tokens = int((target_ids != -100).sum()) - 1
            guide_sum += loss * num_loss_tokens
            guide_tokens += num_loss_tokens
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return math.exp(nll_sum / n_tokens), n_tokens, math.exp(guide_sum / guide_tokens)


def main():
    model_path, tokens_path, max_length, stride, add_bos, bos_id = sys.argv[1:7]
    module = torch.jit.load(model_path)
    with open(tokens_path, encoding="utf-8") as f:
        ids = json.load(f)
    encodings = ([int(bos_id)] if add_bos == "1" else []) + ids  # the tokenizer's BOS, once

    def forward(batch):
        with torch.no_grad():
            return module(batch, torch.ones_like(batch))

    ppl, n, guide = hf_stride_perplexity(forward, encodings, int(max_length), int(stride))
    print(json.dumps({"ppl": ppl, "tokens": n, "ppl_guide_weights": guide}))


if __name__ == "__main__":
    main()
