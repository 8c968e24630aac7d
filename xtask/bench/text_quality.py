"""PyTorch side of the `text_quality` benchmark, for MDLM only (the other processes have no PyTorch
peer; their rows show diffuse alone): the same network (text.py's TextTransformer, built from the
config.json diffuse-bench writes to target/bench-cache: the `text` benchmark's architecture)
trained on the same data for the same wall-clock budget (DIFFUSE_BENCH_SECONDS, default 120 s)
with the same recipe, and scored with the same estimator.

- Data as crates/text/src/corpus.rs builds it: the top-level *_gut.txt files of
  data/datasets/shakespeare (DIFFUSE_DATA_DIR overrides data/datasets), sorted, a leading BOM
  dropped; the last 5% of each document's characters (moved back to the start of its line) held
  out; character vocabulary = every character of the corpus and of "\\n\\n" in code-point order;
  each split's pieces joined by "\\n\\n" and cut into windows of 128; batches of 32 from seeded
  epoch shuffles (not diffuse's exact order).
- Training: MDLM loss (text.mdlm_loss), AdamW lr 1e-3 (weight decay 0.01), linear warmup over
  100 steps (the first step's rate is 0, as diffuse's), then cosine decay to 0 at the end of the
  time budget (by elapsed time), gradient clipping at 1, EMA 0.999 with diffusers' warmup rule
  (decay min(0.999, n / (9 + n)) at update n > 1, 0 at the first, as diffuse's Ema).
- Evaluation: the EMA weights, the continuous-time ELBO on every validation window, 4 stratified
  times per sequence, in f64 (Mdlm::nll), in bits per character.
- Runs only when DIFFUSE_BENCH_TEXT_CASES (default: diffuse's default cases) lists `mdlm`."""
import json
import math
import os
import time

import torch

from common import args, emit
from text import ROOT, TextTransformer, antithetic_times, mdlm_loss, mdlm_per_sequence

SEQ_LEN, BATCH, SEED, VAL_FRACTION, MC, EMA_DECAY = 128, 32, 0, 0.05, 4, 0.999
SEPARATOR = "\n\n"


def budget_seconds():
    v = os.environ.get("DIFFUSE_BENCH_SECONDS")
    if v is None:
        return 120.0
    s = float(v.strip())
    if not (s > 0 and math.isfinite(s)):
        raise SystemExit(f"DIFFUSE_BENCH_SECONDS={v!r}: expected seconds > 0")
    return s


def rust_display(s):
    """How Rust's `{}` prints an f64 (120.0 -> "120"), so the case names match."""
    return str(int(s)) if s == int(s) else repr(s)


def load_documents():
    base = os.environ.get("DIFFUSE_DATA_DIR") or os.path.join(ROOT, "data", "datasets")
    folder = os.path.join(base, "shakespeare")
    names = sorted(n for n in os.listdir(folder)
                   if n.endswith("_gut.txt") and not n.startswith(".")
                   and os.path.isfile(os.path.join(folder, n)))
    docs = []
    for n in names:
        with open(os.path.join(folder, n), encoding="utf-8", newline="") as f:
            text = f.read()
        docs.append(text[1:] if text.startswith("\ufeff") else text)
    return docs


def split_document(text, val_fraction):
    chars = len(text)
    val_chars = math.floor(chars * val_fraction + 0.5)  # Rust's round(): half away from zero
    if val_chars == 0:
        return text, ""
    cut = chars - val_chars
    line_start = text.rfind("\n", 0, cut) + 1
    if line_start > 0:
        cut = line_start
    return text[:cut], text[cut:]


def stream(pieces, index):
    tokens, chars, first = [], 0, True
    for text in pieces:
        if not text:
            continue
        if not first:
            tokens.extend(index[c] for c in SEPARATOR)
            chars += len(SEPARATOR)
        first = False
        tokens.extend(index[c] for c in text)
        chars += len(text)
    n = len(tokens) // SEQ_LEN
    seqs = torch.tensor(tokens[: n * SEQ_LEN], dtype=torch.int64).view(n, SEQ_LEN)
    return seqs, chars / len(tokens)


def main():
    cases = os.environ.get("DIFFUSE_BENCH_TEXT_CASES", "mdlm")
    if "mdlm" not in [c.strip() for c in cases.split(",")]:
        return
    a = args()
    device = torch.device(a.device)
    seconds = budget_seconds()
    docs = load_documents()
    vocab = sorted(set("".join(docs)) | set(SEPARATOR))
    index = {c: i for i, c in enumerate(vocab)}
    parts = [split_document(d, VAL_FRACTION) for d in docs]
    train, _ = stream([p[0] for p in parts], index)
    validation, chars_per_token = stream([p[1] for p in parts], index)
    v = len(vocab)
    mask_id = v

    with open(os.path.join(ROOT, "target", "bench-cache", "text_quality_mdlm_config.json")) as f:
        config = json.load(f)
    if config["vocab_size"] != v + 1 or config["output_vocab_size"] != v + 1:
        raise SystemExit(f"diffuse's MDLM network has vocabulary {config['vocab_size']}, "
                         f"this script's data {v} + [MASK]: the two read different corpora")

    torch.manual_seed(SEED)
    model = TextTransformer(config).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ema = [p.detach().clone() for p in model.parameters()]
    gen = torch.Generator().manual_seed(SEED)
    order, pos = torch.randperm(len(train), generator=gen), 0
    steps = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        if pos + BATCH > len(order):
            order, pos = torch.randperm(len(train), generator=gen), 0
        x0 = train[order[pos:pos + BATCH]].to(device)
        pos += BATCH
        done = min(1.0, (time.perf_counter() - start) / seconds)
        for group in opt.param_groups:
            group["lr"] = 1e-3 * min(1.0, steps / 100) * 0.5 * (1.0 + math.cos(math.pi * done))
        opt.zero_grad(set_to_none=False)
        loss = mdlm_loss(model, x0, mask_id)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        steps += 1
        k = steps - 1  # diffusers' EMAModel: step = optimization_step - 1, decay 0 at the first
        decay = 0.0 if k == 0 else min(EMA_DECAY, (1 + k) / (10 + k))
        with torch.no_grad():
            for e, p in zip(ema, model.parameters()):
                e.sub_((1.0 - decay) * (e - p))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    ms = (time.perf_counter() - start) * 1e3 / steps

    with torch.no_grad():
        for e, p in zip(ema, model.parameters()):
            p.copy_(e)
    model.eval()
    n = validation.shape[0]
    rows = validation.repeat_interleave(MC, 0)
    t = antithetic_times(n * MC, MC)
    per_row = []
    with torch.no_grad():
        for s in range(0, n * MC, BATCH):
            x0 = rows[s:s + BATCH].to(device)
            per = mdlm_per_sequence(model, x0, t[s:s + BATCH], mask_id, dtype=torch.float64)
            per_row.append((per / SEQ_LEN).cpu())
    per_seq = torch.cat(per_row).view(n, MC).mean(1)
    to_bpc = 1.0 / math.log(2) / chars_per_token
    bpc = per_seq.mean().item() * to_bpc
    se = (per_seq.var(correction=1).item() / n) ** 0.5 * to_bpc  # NllEstimate::std_error
    emit(f"mdlm, {rust_display(seconds)} s of training", ms,
         f"{steps} steps, validation bits/char {bpc:.3f} "
         f"(upper bound, 4 times per sequence, {n} windows; s.e. {se:.3f})")


if __name__ == "__main__":
    main()
