"""Golden Fréchet distances for diffuse-image's `fid` module, computed the way pytorch-fid 0.3.0 does.

Random feature sets (rounded to 4 decimals, so Rust and Python read exactly the same numbers) are
reduced to numpy means and unbiased covariances (`np.cov(rowvar=False)`, pytorch-fid's
`calculate_activation_statistics`), and the distance is pytorch-fid's `calculate_frechet_distance`
(reproduced below, with scipy.linalg.sqrtm). One case has fewer samples than dimensions, so both
covariances are singular, where sqrtm is at its least accurate; the fixture also records an
eigendecomposition-based value for it.
    python3 -m pip install --target /tmp/scipy scipy
    PYTHONPATH=target/pyref:/tmp/scipy python3 crates/image/tests/golden/make_fid_golden.py
Writes crates/image/tests/golden/fid.json; `cargo test` only reads it.
"""
import json
import os
import warnings

import numpy as np
import scipy
from scipy import linalg


def calculate_frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """pytorch-fid 0.3.0 (src/pytorch_fid/fid_score.py), unchanged but for the message."""
    mu1 = np.atleast_1d(mu1)
    mu2 = np.atleast_1d(mu2)
    sigma1 = np.atleast_2d(sigma1)
    sigma2 = np.atleast_2d(sigma2)
    assert mu1.shape == mu2.shape
    assert sigma1.shape == sigma2.shape
    diff = mu1 - mu2
    with warnings.catch_warnings():
        # scipy >= 1.16 deprecates `disp`; pytorch-fid still passes it.
        warnings.simplefilter("ignore", DeprecationWarning)
        covmean, _ = linalg.sqrtm(sigma1.dot(sigma2), disp=False)
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError("Imaginary component {}".format(np.max(np.abs(covmean.imag))))
        covmean = covmean.real
    tr_covmean = np.trace(covmean)
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def eigh_frechet_distance(mu1, sigma1, mu2, sigma2):
    """Tr((S1 S2)^1/2) as the sum of sqrt(eig(sqrt(S1) S2 sqrt(S1))): the method diffuse uses."""
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root1 @ sigma2 @ root1
    m = (m + m.T) / 2
    tr = np.sqrt(np.clip(np.linalg.eigvalsh(m), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * tr)


def features(rng, n, d, shift, silu):
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    x = rng.normal(size=(n, d)) @ mix + shift
    if silu:
        # Shaped like the classifier's post-SiLU features: skewed, bounded below.
        x = x / (1 + np.exp(-x))
    return np.round(x, 4)


def main():
    rng = np.random.default_rng(20170626)
    specs = [
        # name, d, n1, n2, mean shift of set 2, post-SiLU
        ("gaussian_d8", 8, 64, 80, 0.3, False),
        ("silu_d16", 16, 120, 100, 0.5, True),
        ("close_d16", 16, 150, 150, 0.0, False),
        ("singular_d24", 24, 16, 20, 0.2, False),
    ]
    cases = []
    for name, d, n1, n2, shift, silu in specs:
        a = features(rng, n1, d, 0.0, silu)
        if name.startswith("close"):
            # Nearly the same distribution: a small distance, where cancellation is hardest.
            b = np.round(a[rng.permutation(n1)] + rng.normal(scale=0.05, size=a.shape), 4)
        else:
            b = features(rng, n2, d, shift, silu)
        mu1, s1 = a.mean(axis=0), np.cov(a, rowvar=False)
        mu2, s2 = b.mean(axis=0), np.cov(b, rowvar=False)
        fid = calculate_frechet_distance(mu1, s1, mu2, s2)
        fid_eigh = eigh_frechet_distance(mu1, s1, mu2, s2)
        print(f"{name}: pytorch-fid {fid:.12g}  eigh {fid_eigh:.12g}  rel {abs(fid - fid_eigh) / abs(fid):.2e}")
        cases.append({
            "name": name,
            "d": d,
            "a": a.ravel().tolist(),
            "b": b.ravel().tolist(),
            "mean_a": mu1.tolist(),
            "cov_a": s1.ravel().tolist(),
            "fid": fid,
            "fid_eigh": fid_eigh,
        })
    out = {
        "reference": "pytorch-fid 0.3.0 calculate_frechet_distance",
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "cases": cases,
    }
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fid.json")
    with open(path, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    print("wrote", path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
