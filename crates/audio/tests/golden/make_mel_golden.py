"""Golden values for diffuse-audio's log-mel features, from librosa itself (the reference the
features follow): `librosa.filters.mel(htk=False, norm="slaney")` filterbanks and
`librosa.feature.melspectrogram(center=True, pad_mode="reflect", window="hann", power=2)`
followed by `librosa.power_to_db(ref=1.0, amin=1e-10, top_db=None)`, all in float64.
librosa is installed outside the repository just for this (cargo test never needs Python):

    python3 -m pip install --target /tmp/pylibrosa librosa==0.11.0
    PYTHONPATH=/tmp/pylibrosa python3 crates/audio/tests/golden/make_mel_golden.py

Writes crates/audio/tests/golden/mel_golden.json, used by crates/audio/tests/it/features.rs.
Filterbanks are stored sparsely (each band's first non-zero bin and its weights).
"""

import json
import pathlib
import wave

import librosa
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[4]
OUT = ROOT / "crates/audio/tests/golden/mel_golden.json"


def filterbank(sr, n_fft, n_mels, fmin, fmax):
    fb = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=False, norm="slaney", dtype=np.float64)
    rows = []
    for row in fb:
        nz = np.nonzero(row)[0]
        start, stop = (int(nz[0]), int(nz[-1]) + 1) if len(nz) else (0, 0)
        rows.append({"start": start, "weights": [float(f"{w:.9g}") for w in row[start:stop]]})
    return {
        "config": {"sample_rate": sr, "n_fft": n_fft, "hop_length": n_fft // 4, "n_mels": n_mels, "f_min": fmin, "f_max": fmax},
        "rows": rows,
    }


def log_mel(y, sr, n_fft, hop, n_mels, fmin, fmax):
    s = librosa.feature.melspectrogram(
        y=y, sr=sr, n_fft=n_fft, hop_length=hop, window="hann", center=True, pad_mode="reflect",
        power=2.0, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=False, norm="slaney", dtype=np.float64,
    )
    db = librosa.power_to_db(s, ref=1.0, amin=1e-10, top_db=None)
    return {
        "config": {"sample_rate": sr, "n_fft": n_fft, "hop_length": hop, "n_mels": n_mels, "f_min": fmin, "f_max": fmax},
        "frames": int(db.shape[1]),
        # [frames, n_mels], as diffuse-audio returns it.
        "db": [[round(float(v), 5) for v in frame] for frame in db.T],
    }


def synthetic(sr=8000, n=2000):
    """Two tones and a chirp: every mel band sees something, nothing is random."""
    t = np.arange(n) / sr
    chirp = np.sin(2 * np.pi * (100 * t + 0.5 * (3500 - 100) / (n / sr) * t * t))
    return 0.5 * np.sin(2 * np.pi * 440 * t) + 0.25 * np.sin(2 * np.pi * 1900 * t + 0.3) + 0.1 * chirp


def main():
    digit = ROOT / "data/fixtures/speech-digits/0.wav"
    with wave.open(str(digit)) as f:
        speech = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2").astype(np.float64) / 32768.0
        speech_rate = f.getframerate()
    out = {
        "generator": f"librosa {librosa.__version__}, numpy {np.__version__}",
        "filterbanks": [
            filterbank(8000, 64, 8, 0.0, 4000.0),
            filterbank(16000, 1024, 64, 0.0, 8000.0),
            filterbank(22050, 2048, 128, 30.0, 8000.0),
        ],
        "synthetic": {
            "signal": "0.5 sin(2 pi 440 t) + 0.25 sin(2 pi 1900 t + 0.3) + 0.1 sin(2 pi (100 t + 0.5 (3500 - 100) / 0.25 t^2)), 2000 samples at 8 kHz",
            **log_mel(synthetic(), 8000, 256, 64, 40, 0.0, 4000.0),
        },
        "speech": {
            "file": str(digit.relative_to(ROOT)),
            **log_mel(speech, speech_rate, 512, 128, 64, 0.0, 4000.0),
        },
    }
    OUT.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
