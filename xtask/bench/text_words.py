"""Do sampled texts read as words? For each JSON file of `diffuse sample text --json` output, the share of
its words (runs of ASCII letters, lowercased) that occur in the training text of the `shakespeare` corpus
(the first 95% of each top-level *_gut.txt work, as diffuse's split keeps them; DIFFUSE_DATA_DIR overrides
data/datasets). With `--bounds`, also the held-out text's rate (the bound) and that of uniformly random
characters of the held-out text (the floor). Two checks that a sampler does not buy word validity with
repetition: the share of distinct word pairs among all consecutive word pairs in a file (distinct-2, lower when
text repeats itself), and the share of words that are among the 10 commonest words of the training text; with
`--bounds` both are also given for held-out passages of the first file's number and length. Not a registered benchmark: BENCHMARKS.md's text section runs it
by hand.

    python3 xtask/bench/text_words.py [--bounds] SAMPLES.json ..."""
import glob
import json
import os
import random
import re
import sys

WORD = re.compile(r"[A-Za-z]+")


def works():
    base = os.environ.get("DIFFUSE_DATA_DIR") or os.path.join(
        os.path.dirname(__file__), "..", "..", "data", "datasets")
    for path in sorted(glob.glob(os.path.join(base, "shakespeare", "*_gut.txt"))):
        with open(path, encoding="utf-8") as f:
            text = f.read().lstrip("\ufeff")
        cut = int(len(text) * 0.95)
        yield text[:cut], text[cut:]


def rate(text, words):
    found = [w.lower() for w in WORD.findall(text)]
    return sum(w in words for w in found) / max(1, len(found)), len(found)


def pairs(texts):
    """Distinct consecutive word pairs over all pairs, each text on its own."""
    seen, total = set(), 0
    for t in texts:
        ws = [w.lower() for w in WORD.findall(t)]
        for pair in zip(ws, ws[1:]):
            seen.add(pair)
            total += 1
    return len(seen) / max(1, total)


def common_share(texts, common):
    ws = [w.lower() for t in texts for w in WORD.findall(t)]
    return sum(w in common for w in ws) / max(1, len(ws))


def report(label, texts, words, common):
    r, n = rate("\n".join(texts), words)
    print(f"{label}: {r:.3f} of {n} words are words of the training text; distinct word pairs "
          f"{pairs(texts):.3f}; 10 commonest words {common_share(texts, common):.3f}")


def main():
    args = sys.argv[1:]
    bounds = "--bounds" in args
    files = [a for a in args if a != "--bounds"]
    parts = list(works())
    if not parts:
        raise SystemExit("no shakespeare works found (cargo xtask setup --data shakespeare)")
    counts = {}
    for train, _ in parts:
        for w in WORD.findall(train):
            counts[w.lower()] = counts.get(w.lower(), 0) + 1
    words = set(counts)
    common = set(sorted(counts, key=counts.get, reverse=True)[:10])
    shape = None
    for path in files:
        with open(path, encoding="utf-8") as f:
            texts = json.load(f)["samples"]
        shape = shape or (len(texts), max(1, len(texts[0])))
        report(path, texts, words, common)
    if bounds:
        held = "".join(h for _, h in parts)
        random.seed(0)
        num, size = shape or (16, 256)
        starts = [random.randrange(len(held) - size) for _ in range(num)]
        report(f"held-out text ({num} passages of {size} characters)",
               [held[s:s + size] for s in starts], words, common)
        r, n = rate(held, words)
        print(f"all held-out text: {r:.3f} of {n} words")
        chars = sorted(set(held))
        noise = "".join(random.choice(chars) for _ in range(len(held) // 20))
        r, n = rate(noise, words)
        print(f"random characters of the held-out text: {r:.3f} of {n} words")

if __name__ == "__main__":
    main()
