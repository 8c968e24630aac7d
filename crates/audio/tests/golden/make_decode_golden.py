"""Golden values for decoding the committed FLAC, AIFF and WAV fixtures, from decoders that share
no code with diffuse-audio (hound, symphonia): libsndfile through the `soundfile` package for
FLAC and AIFF, Python's own `aifc` module for AIFF too (the two must agree exactly), and Python's
`wave` module for the speech-digit WAVs.

Samples are scaled as diffuse-audio reads them, integer / 2^(bits-1) (libsndfile's float
reading uses the same scale). Run from the repository root:

    python3 -m pip install --target /tmp/pyextra soundfile==0.14.0 numpy
    PYTHONPATH=/tmp/pyextra python3 crates/audio/tests/golden/make_decode_golden.py

Writes crates/audio/tests/golden/decode_golden.json. Used by crates/audio/tests/it/wav.rs.
"""

import aifc
import json
import pathlib
import wave

import numpy as np
import soundfile

ROOT = pathlib.Path(__file__).resolve().parents[4]
FIXTURES = ROOT / "crates/audio/tests/fixtures"
DIGITS = ROOT / "data/fixtures/speech-digits"
OUT = ROOT / "crates/audio/tests/golden/decode_golden.json"


def summary(data, rate, path, extra):
    """data: [frames, channels] float64 in [-1, 1]."""
    frames, channels = data.shape
    picks = sorted({0, 1, frames // 7, frames // 3, frames // 2, frames - 1})
    peak_index = int(np.argmax(np.abs(data).max(axis=1)))
    return {
        "file": str(path.relative_to(ROOT)),
        "sample_rate": int(rate),
        "channels": int(channels),
        "frames": int(frames),
        "sum_of_squares": [float(np.sum(data[:, c] ** 2)) for c in range(channels)],
        "peak": float(np.abs(data).max()),
        "peak_frame": peak_index,
        "samples": {str(i): [float(v) for v in data[i]] for i in picks + [peak_index]},
        **extra,
    }


def read_aifc(path):
    with aifc.open(str(path)) as f:
        n, ch, width = f.getnframes(), f.getnchannels(), f.getsampwidth()
        raw = f.readframes(n)
        rate = f.getframerate()
    assert width == 2, width
    q = np.frombuffer(raw, dtype=">i2").astype(np.float64).reshape(n, ch)
    return q / 2.0**15, rate


def main():
    out = {"generator": f"soundfile {soundfile.__version__} (libsndfile {soundfile.__libsndfile_version__}), numpy {np.__version__}, Python aifc/wave"}

    flac = FIXTURES / "rumpf-beats_06-15.flac"
    data, rate = soundfile.read(str(flac), dtype="float64", always_2d=True)
    info = soundfile.info(str(flac))
    out["flac"] = summary(data, rate, flac, {"subtype": info.subtype})

    aiff = FIXTURES / "bja-pacific-HH_01.aiff"
    data, rate = soundfile.read(str(aiff), dtype="float64", always_2d=True)
    ref, ref_rate = read_aifc(aiff)
    assert ref_rate == rate and np.array_equal(ref, data), "libsndfile and aifc disagree"
    info = soundfile.info(str(aiff))
    out["aiff"] = summary(data, rate, aiff, {"subtype": info.subtype})

    digits = []
    for i in range(10):
        path = DIGITS / f"{i}.wav"
        with wave.open(str(path)) as f:
            n, ch, width, rate = f.getnframes(), f.getnchannels(), f.getsampwidth(), f.getframerate()
            q = np.frombuffer(f.readframes(n), dtype="<i2").astype(np.float64).reshape(n, ch)
        assert width == 2
        digits.append(summary(q / 2.0**15, rate, path, {}))
    out["speech_digits"] = digits

    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
