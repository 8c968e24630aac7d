//! Earth mover's distance (Wasserstein-1) between the one-dimensional marginals of two sets of
//! samples: for each column, the integral of |F_a - G_b| between the two empirical CDFs, which on
//! the line is the optimal transport cost exactly (JUMP's evaluation of count data uses the same
//! per-dimension distance). Works for counts and for any real values.

use tch::{Kind, Tensor};

/// W1 between the empirical distributions of `a` and `b` (any order, any lengths >= 1).
pub fn wasserstein1(a: &[f64], b: &[f64]) -> f64 {
    assert!(
        !a.is_empty() && !b.is_empty(),
        "wasserstein1 of an empty sample"
    );
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (na, nb) = (a.len() as f64, b.len() as f64);
    // Sweep the merged support, integrating |F_a - F_b| between consecutive points.
    let (mut i, mut j) = (0usize, 0usize);
    let mut x = a[0].min(b[0]);
    let mut total = 0.0;
    while i < a.len() || j < b.len() {
        let next = match (a.get(i), b.get(j)) {
            (Some(&u), Some(&v)) => u.min(v),
            (Some(&u), None) => u,
            (None, Some(&v)) => v,
            (None, None) => break,
        };
        total += (i as f64 / na - j as f64 / nb).abs() * (next - x);
        while i < a.len() && a[i] <= next {
            i += 1;
        }
        while j < b.len() && b[j] <= next {
            j += 1;
        }
        x = next;
    }
    total
}

/// W1 of every column of `a` `[N, D]` against the same column of `b` `[M, D]`.
pub fn marginal_emd(a: &Tensor, b: &Tensor) -> Vec<f64> {
    let (a, b) = (a.flatten(1, -1), b.flatten(1, -1));
    let d = a.size()[1];
    assert_eq!(d, b.size()[1], "marginal_emd: column counts differ");
    let cols = |x: &Tensor| -> Vec<Vec<f64>> {
        let x = x
            .to_kind(Kind::Double)
            .to_device(tch::Device::Cpu)
            .tr()
            .contiguous();
        (0..d)
            .map(|c| Vec::<f64>::try_from(x.get(c)).expect("column"))
            .collect()
    };
    let (ca, cb) = (cols(&a), cols(&b));
    ca.iter()
        .zip(&cb)
        .map(|(u, v)| wasserstein1(u, v))
        .collect()
}
