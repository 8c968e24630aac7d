"""Do sampled texts read as words? For each JSON file of `diffuse sample text --json` output, the share of
its words (runs of ASCII letters, lowercased) that occur in the training text of the `shakespeare` corpus
(the first 95% of each top-level *_gut.txt work, as diffuse's split keeps them; DIFFUSE_DATA_DIR overrides
data/datasets). With `--bounds`, also the held-out text's rate (the bound) and that of uniformly random
characters of the held-out text (the floor). Not a registered benchmark: BENCHMARKS.md's text section runs it
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


def main():
    args = sys.argv[1:]
    bounds = "--bounds" in args
    files = [a for a in args if a != "--bounds"]
    parts = list(works())
    if not parts:
        raise SystemExit("no shakespeare works found (cargo xtask setup --data shakespeare)")
    words = {w.lower() for train, _ in parts for w in WORD.findall(train)}
    for path in files:
        with open(path, encoding="utf-8") as f:
            texts = json.load(f)["samples"]
        r, n = rate("\n".join(texts), words)
        print(f"{path}: {r:.3f} of {n} words are words of the training text")
    if bounds:
        held = "".join(h for _, h in parts)
        r, n = rate(held, words)
        print(f"held-out text: {r:.3f} of {n} words")
        random.seed(0)
        chars = sorted(set(held))
        noise = "".join(random.choice(chars) for _ in range(len(held) // 20))
        r, n = rate(noise, words)
        print(f"random characters of the held-out text: {r:.3f} of {n} words")


if __name__ == "__main__":
    main()
