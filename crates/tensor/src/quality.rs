//! What a judge classifier says about generated examples, whatever the modality: the class mix and
//! mean confidence of a set of logits ([`mix_and_confidence`]); for a class-conditional model, the
//! share of the examples asked for each class that the judge puts in it, with the confusion matrix
//! ([`conditional_report`]); and precision and recall in the judge's feature space
//! ([`precision_recall`]), which tell fidelity (generated examples look like real ones) apart from
//! diversity (the real ones are all covered), where a Fréchet or kernel distance mixes the two.
//! `diffuse eval audio` and `diffuse eval image` both report these, each beside the same figure
//! for real held-out data, so a figure always comes with what real data gets.
//!
//! Everything is computed in f64 on the CPU.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Share of rows of `logits` `[N, K]` predicted as each of `k` classes, and the mean largest
/// class probability (softmax).
pub fn mix_and_confidence(logits: &Tensor, k: i64) -> (Vec<f64>, f64) {
    let logits = logits.to_device(Device::Cpu);
    let n = logits.size()[0].max(1) as f64;
    let predicted = logits.argmax(-1, false);
    let counts = predicted.bincount::<Tensor>(None, k).to_kind(Kind::Double) / n;
    let confidence = logits
        .softmax(-1, Kind::Double)
        .amax([-1i64].as_slice(), false)
        .mean(Kind::Double)
        .double_value(&[]);
    (
        Vec::<f64>::try_from(counts).expect("bincount is a vector"),
        confidence,
    )
}

/// One class's line of a per-class report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassAccuracy {
    pub class: String,
    /// Examples of the class: asked for it (generated) or labelled with it (real). Named `clips`
    /// because the audio reports that first wrote it keep their JSON as it was.
    pub clips: u64,
    /// Share of its examples predicted as it (`None` without examples; written as null).
    pub accuracy: Option<f64>,
}

/// Each class's share as a report line reads it: "kick 100%, snare 75%, tom -" (`-`: no examples).
pub fn format_shares(shares: &[ClassAccuracy]) -> String {
    shares
        .iter()
        .map(|p| match p.accuracy {
            Some(a) => format!("{} {:.0}%", p.class, 100.0 * a),
            None => format!("{} -", p.class),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// How examples asked for classes were classified.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConditionalReport {
    /// Per requested class: its generated examples and the share classified as it.
    pub per_class: Vec<ClassAccuracy>,
    /// Mean over the requested classes of their shares.
    pub mean_accuracy: f64,
    /// The same for real held-out examples of those classes (what a perfect model would get).
    pub real_per_class: Vec<ClassAccuracy>,
    /// Their mean over the classes with real examples (`None` when the real examples have no
    /// labels the judge knows).
    pub real_mean_accuracy: Option<f64>,
    /// One over the judge's classes: what examples of no class would get by chance.
    pub chance: f64,
    /// `confusion[requested][predicted]`, rows in the order of `per_class`, columns the judge's
    /// classes.
    pub confusion: Vec<Vec<u64>>,
}

/// A vector of class indices `[N]` as i64 on the CPU, checked to lie in `-1..k` (`-1`: no class,
/// allowed where `none_allowed`).
fn class_vector(t: &Tensor, k: i64, what: &str, none_allowed: bool) -> Result<Tensor> {
    if t.dim() != 1 {
        return Err(Error::InvalidArgument(format!(
            "{what} must be a vector of class indices, got shape {:?}",
            t.size()
        )));
    }
    let t = t.to_kind(Kind::Int64).to_device(Device::Cpu);
    if t.numel() > 0 {
        let (lo, hi) = (t.min().int64_value(&[]), t.max().int64_value(&[]));
        let least = if none_allowed { -1 } else { 0 };
        if lo < least || hi >= k {
            return Err(Error::InvalidArgument(format!(
                "{what}: class indices must lie in {least}..{k}, got {lo}..={hi}"
            )));
        }
    }
    Ok(t)
}

/// The report on generated examples asked for `requested` `[N]` classes and classified as
/// `predicted` `[N]`, beside real examples labelled `real_labels` `[M]` (-1: no label the judge
/// knows) and classified as `real_predicted` `[M]`; all indices are the judge's, whose classes are
/// `class_names`. Rows follow the requested classes in increasing order.
pub fn conditional_report(
    requested: &Tensor,
    predicted: &Tensor,
    real_labels: &Tensor,
    real_predicted: &Tensor,
    class_names: &[String],
) -> Result<ConditionalReport> {
    let k = class_names.len() as i64;
    if k == 0 {
        return Err(Error::InvalidArgument(
            "a conditional report needs a judge with at least one class".into(),
        ));
    }
    let requested = class_vector(requested, k, "requested classes", false)?;
    let heard = class_vector(predicted, k, "predicted classes", false)?;
    let labels = class_vector(real_labels, k, "real labels", true)?;
    let real_heard = class_vector(real_predicted, k, "real predictions", false)?;
    if requested.size() != heard.size() || labels.size() != real_heard.size() {
        return Err(Error::InvalidArgument(format!(
            "one prediction per example: {} requested and {} predicted, {} real labels and {} \
             real predictions",
            requested.numel(),
            heard.numel(),
            labels.numel(),
            real_heard.numel()
        )));
    }
    let mut classes: Vec<i64> = Vec::<i64>::try_from(&requested)?;
    classes.sort_unstable();
    classes.dedup();
    let share = |who: &Tensor, heard: &Tensor, c: i64| {
        let mask = who.eq(c);
        let clips = mask.sum(Kind::Int64).int64_value(&[]) as u64;
        let hits = heard
            .eq(c)
            .logical_and(&mask)
            .sum(Kind::Int64)
            .int64_value(&[]);
        ClassAccuracy {
            class: class_names[c as usize].clone(),
            clips,
            accuracy: (clips > 0).then(|| hits as f64 / clips as f64),
        }
    };
    let per_class: Vec<ClassAccuracy> = classes
        .iter()
        .map(|&c| share(&requested, &heard, c))
        .collect();
    let real_per_class: Vec<ClassAccuracy> = classes
        .iter()
        .map(|&c| share(&labels, &real_heard, c))
        .collect();
    let mean = |v: &[ClassAccuracy]| {
        let a: Vec<f64> = v.iter().filter_map(|c| c.accuracy).collect();
        (!a.is_empty()).then(|| a.iter().sum::<f64>() / a.len() as f64)
    };
    let confusion = classes
        .iter()
        .map(|&c| -> Result<Vec<u64>> {
            let rows = heard.masked_select(&requested.eq(c));
            Ok(Vec::<i64>::try_from(rows.bincount::<Tensor>(None, k))?
                .into_iter()
                .map(|v| v as u64)
                .collect())
        })
        .collect::<Result<_>>()?;
    Ok(ConditionalReport {
        mean_accuracy: mean(&per_class).unwrap_or(0.0),
        real_mean_accuracy: mean(&real_per_class),
        per_class,
        real_per_class,
        chance: 1.0 / k as f64,
        confusion,
    })
}

/// Neighbours that set the radius of each point's ball in [`precision_recall`]: k = 3, the value
/// Kynkäänniemi et al. 2019 recommend (sec. 3).
pub const NEIGHBOURS: i64 = 3;

/// Entries of one block of pairwise distances (4M f64, 32 MB): 10,000 x 10,000 distances (800 MB
/// at once) are computed a band of rows at a time.
const BLOCK_ELEMENTS: i64 = 1 << 22;

/// Improved precision and recall of a generated set against a real one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrecisionRecall {
    /// Share of generated feature vectors inside the real set's manifold.
    pub precision: f64,
    /// Share of real feature vectors inside the generated set's manifold.
    pub recall: f64,
    /// The k of the k-nearest-neighbour balls.
    pub neighbours: i64,
    /// Feature vectors in each set.
    pub real: i64,
    pub generated: i64,
}

/// Precision and recall of Kynkäänniemi et al. 2019 ("Improved Precision and Recall Metric for
/// Assessing Generative Models", eq. 1-3) between the rows of `real` `[M, D]` and `generated`
/// `[N, D]`: a set's manifold is the union of balls around its points, each as wide as the
/// distance to the point's `k`-th nearest neighbour in the same set (itself excluded); precision
/// is the share of generated points inside the real manifold, recall the share of real points
/// inside the generated one. Distances are Euclidean, in f64 on the CPU, a band of rows at a time.
/// Sets of fewer than k + 1 points or of different widths are [`Error::InvalidArgument`].
pub fn precision_recall(real: &Tensor, generated: &Tensor, k: i64) -> Result<PrecisionRecall> {
    precision_recall_in_blocks(real, generated, k, BLOCK_ELEMENTS)
}

fn precision_recall_in_blocks(
    real: &Tensor,
    generated: &Tensor,
    k: i64,
    block_elements: i64,
) -> Result<PrecisionRecall> {
    let (r, g) = (real.size(), generated.size());
    if r.len() != 2 || g.len() != 2 || r[1] != g[1] {
        return Err(Error::InvalidArgument(format!(
            "precision and recall compare two [N, D] feature sets of one width, got {r:?} and {g:?}"
        )));
    }
    if k < 1 {
        return Err(Error::InvalidArgument(format!(
            "precision and recall need k >= 1 nearest neighbours, got {k}"
        )));
    }
    if r[0] < k + 1 || g[0] < k + 1 {
        return Err(Error::InvalidArgument(format!(
            "precision and recall with {k} nearest neighbours need at least {} feature vectors \
             in each set, got {} real and {} generated",
            k + 1,
            r[0],
            g[0]
        )));
    }
    let real = real.to_device(Device::Cpu).to_kind(Kind::Double);
    let generated = generated.to_device(Device::Cpu).to_kind(Kind::Double);
    let real_radii = knn_radii(&real, k, block_elements);
    let generated_radii = knn_radii(&generated, k, block_elements);
    Ok(PrecisionRecall {
        precision: coverage(&generated, &real, &real_radii, block_elements),
        recall: coverage(&real, &generated, &generated_radii, block_elements),
        neighbours: k,
        real: r[0],
        generated: g[0],
    })
}

/// Squared norms `[N]` of the rows of `x` `[N, D]`.
fn squared_norms(x: &Tensor) -> Tensor {
    x.square()
        .sum_dim_intlist([1i64].as_slice(), false, Kind::Double)
}

/// Squared distances `[B, N]` between the rows of `a` `[B, D]` and of `b` `[N, D]` (whose squared
/// norms are `b_norms`), as |a|^2 + |b|^2 - 2 a.b, rounding below 0 clamped to 0.
fn squared_distances(a: &Tensor, b: &Tensor, b_norms: &Tensor) -> Tensor {
    (squared_norms(a).unsqueeze(1) + b_norms.unsqueeze(0) - a.matmul(&b.tr()) * 2.0).clamp_min(0.0)
}

/// Rows per band so that a band of distances to `n` points holds about `block_elements` entries.
fn rows_per_band(n: i64, block_elements: i64) -> i64 {
    (block_elements / n.max(1)).max(1)
}

/// Squared distance `[N]` from each row of `x` to its `k`-th nearest other row.
fn knn_radii(x: &Tensor, k: i64, block_elements: i64) -> Tensor {
    let n = x.size()[0];
    let norms = squared_norms(x);
    let rows = rows_per_band(n, block_elements);
    let mut radii = Vec::new();
    let mut start = 0;
    while start < n {
        let len = rows.min(n - start);
        let d = squared_distances(&x.narrow(0, start, len), x, &norms);
        // A point's distance to itself is exactly 0 (rounding may leave a trace), so the
        // (k+1)-th smallest entry of its row is its k-th nearest other point.
        let mut own = d.narrow(1, start, len).diagonal(0, 0, 1);
        let _ = own.fill_(0.0);
        radii.push(d.kthvalue(k + 1, 1, false).0);
        start += len;
    }
    Tensor::cat(&radii, 0)
}

/// Share of the rows of `query` that lie within the ball of some row `i` of `points`, of squared
/// radius `radii[i]` (boundary included).
fn coverage(query: &Tensor, points: &Tensor, radii: &Tensor, block_elements: i64) -> f64 {
    let (m, n) = (query.size()[0], points.size()[0]);
    let norms = squared_norms(points);
    let radii = radii.unsqueeze(0);
    let rows = rows_per_band(n, block_elements);
    let mut inside = 0;
    let mut start = 0;
    while start < m {
        let len = rows.min(m - start);
        let d = squared_distances(&query.narrow(0, start, len), points, &norms);
        inside += d
            .le_tensor(&radii)
            .any_dim(1, false)
            .sum(Kind::Int64)
            .int64_value(&[]);
        start += len;
    }
    inside as f64 / m.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(k: usize) -> Vec<String> {
        (0..k).map(|i| format!("c{i}")).collect()
    }

    fn ints(v: &[i64]) -> Tensor {
        Tensor::from_slice(v)
    }

    /// Points with whole-number coordinates, so every distance is exact in f64.
    fn grid(rows: i64, cols: i64, offset: f64) -> Tensor {
        let i = Tensor::arange(rows * cols, (Kind::Double, Device::Cpu));
        ((&i * 7).remainder(11) + offset).reshape([rows, cols])
    }

    #[test]
    fn mix_and_confidence_count_argmaxes_and_average_the_top_probability() {
        let logits = Tensor::from_slice(&[0.0f64, 0.0, 2.0f64.ln(), 0.0, 0.0, 0.0]).reshape([3, 2]);
        // Row 0: [0, 0] ties at 1/2 (argmax takes the first: class 0); row 1: [ln 2, 0] -> 2/3
        // (class 0); row 2: [0, 0] -> 1/2 (class 0). Three classes asked for: the third is empty.
        let (mix, confidence) = mix_and_confidence(&logits, 3);
        assert_eq!(mix, vec![1.0, 0.0, 0.0]);
        assert!((confidence - (0.5 + 2.0 / 3.0 + 0.5) / 3.0).abs() < 1e-12);
        let logits = Tensor::from_slice(&[5.0f64, 0.0, 0.0, 5.0]).reshape([2, 2]);
        let (mix, _) = mix_and_confidence(&logits, 2);
        assert_eq!(mix, vec![0.5, 0.5]);
    }

    #[test]
    fn conditional_report_counts_shares_and_confusion_by_requested_class() {
        // Asked for 2, 2, 2, 0 (rows sorted: 0 then 2); predicted 2, 1, 2, 0.
        let r = conditional_report(
            &ints(&[2, 2, 2, 0]),
            &ints(&[2, 1, 2, 0]),
            &ints(&[0, 0, 2, -1, 1]),
            &ints(&[0, 1, 2, 2, 1]),
            &names(3),
        )
        .unwrap();
        let shares: Vec<(String, u64, Option<f64>)> = r
            .per_class
            .iter()
            .map(|c| (c.class.clone(), c.clips, c.accuracy))
            .collect();
        assert_eq!(
            shares,
            vec![
                ("c0".into(), 1, Some(1.0)),
                ("c2".into(), 3, Some(2.0 / 3.0))
            ]
        );
        assert_eq!(r.confusion, vec![vec![1, 0, 0], vec![0, 1, 2]]);
        assert!((r.mean_accuracy - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        // Real: class 0 has two examples, one right; class 2 one, right; -1 is counted nowhere.
        assert_eq!(r.real_per_class[0].clips, 2);
        assert_eq!(r.real_per_class[0].accuracy, Some(0.5));
        assert_eq!(r.real_per_class[1].accuracy, Some(1.0));
        assert_eq!(r.real_mean_accuracy, Some(0.75));
        assert!((r.chance - 1.0 / 3.0).abs() < 1e-15);
        // No real example of the requested class: no real figure, not a zero.
        let r = conditional_report(
            &ints(&[1]),
            &ints(&[1]),
            &ints(&[0]),
            &ints(&[0]),
            &names(2),
        )
        .unwrap();
        assert_eq!(r.real_per_class[0].accuracy, None);
        assert_eq!(r.real_mean_accuracy, None);
    }

    #[test]
    fn conditional_report_refuses_bad_indices_and_lengths() {
        let n = names(2);
        let bad = [
            conditional_report(&ints(&[2]), &ints(&[0]), &ints(&[0]), &ints(&[0]), &n),
            conditional_report(&ints(&[-1]), &ints(&[0]), &ints(&[0]), &ints(&[0]), &n),
            conditional_report(&ints(&[0, 1]), &ints(&[0]), &ints(&[0]), &ints(&[0]), &n),
            conditional_report(&ints(&[0]), &ints(&[0]), &ints(&[0, 1]), &ints(&[0]), &n),
            conditional_report(&ints(&[0]), &ints(&[0]), &ints(&[0]), &ints(&[0]), &[]),
        ];
        for r in bad {
            assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
        }
    }

    #[test]
    fn identical_sets_have_precision_and_recall_one() {
        let x = grid(40, 5, 0.0);
        let pr = precision_recall(&x, &x, NEIGHBOURS).unwrap();
        assert_eq!((pr.precision, pr.recall), (1.0, 1.0));
        assert_eq!((pr.neighbours, pr.real, pr.generated), (3, 40, 40));
    }

    #[test]
    fn far_apart_sets_have_precision_and_recall_zero() {
        let real = grid(30, 4, 0.0);
        let generated = grid(25, 4, 1000.0);
        let pr = precision_recall(&real, &generated, NEIGHBOURS).unwrap();
        assert_eq!((pr.precision, pr.recall), (0.0, 0.0));
    }

    #[test]
    fn dropping_one_of_two_modes_keeps_precision_and_halves_recall() {
        // Real: two clusters of 20 points, 1000 apart; generated: exactly the first cluster.
        // Every generated point is a real point (precision 1); the real points of the second
        // cluster are far outside every generated ball (recall 20 / 40).
        let first = grid(20, 3, 0.0);
        let real = Tensor::cat(&[&first, &grid(20, 3, 1000.0)], 0);
        let pr = precision_recall(&real, &first, NEIGHBOURS).unwrap();
        assert_eq!((pr.precision, pr.recall), (1.0, 0.5));
        // Swapped: the generated set covers twice the modes; precision halves, recall stays.
        let pr = precision_recall(&first, &real, NEIGHBOURS).unwrap();
        assert_eq!((pr.precision, pr.recall), (0.5, 1.0));
    }

    #[test]
    fn a_hand_computed_line_with_one_neighbour() {
        // Real 0, 1, 3 have radii 1, 1, 2; generated 0.5, 0.625, 10 have radii 0.125, 0.125, 9.375.
        // Precision: 0.5 and 0.625 lie in 0's ball, 10 in none: 2/3. Recall: 0 lies in no
        // generated ball (0.5 > 0.125, 10 > 9.375), 1 and 3 in 10's (9 and 7 <= 9.375): 2/3.
        let real = Tensor::from_slice(&[0.0f64, 1.0, 3.0]).reshape([3, 1]);
        let generated = Tensor::from_slice(&[0.5f64, 0.625, 10.0]).reshape([3, 1]);
        let pr = precision_recall(&real, &generated, 1).unwrap();
        assert_eq!((pr.precision, pr.recall), (2.0 / 3.0, 2.0 / 3.0));
    }

    #[test]
    fn bands_of_any_size_give_the_brute_force_answer() {
        let make = |rows: i64, shift: f64| {
            let i = Tensor::arange(rows * 6, (Kind::Double, Device::Cpu));
            ((&i * 0.7).sin() + (&i * 0.13).cos() * 0.5 + shift).reshape([rows, 6])
        };
        let (real, generated) = (make(53, 0.0), make(41, 0.2));
        // Brute force, pair by pair.
        let rows = |t: &Tensor| -> Vec<Vec<f64>> {
            (0..t.size()[0])
                .map(|i| Vec::<f64>::try_from(t.get(i)).unwrap())
                .collect()
        };
        let (r, g) = (rows(&real), rows(&generated));
        let dist =
            |a: &[f64], b: &[f64]| -> f64 { a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum() };
        let radii = |s: &[Vec<f64>]| -> Vec<f64> {
            s.iter()
                .enumerate()
                .map(|(i, p)| {
                    let mut d: Vec<f64> = s
                        .iter()
                        .enumerate()
                        .filter(|&(j, _)| j != i)
                        .map(|(_, q)| dist(p, q))
                        .collect();
                    d.sort_by(f64::total_cmp);
                    d[NEIGHBOURS as usize - 1]
                })
                .collect()
        };
        let cover = |q: &[Vec<f64>], s: &[Vec<f64>], rad: &[f64]| -> f64 {
            let n = q
                .iter()
                .filter(|p| s.iter().zip(rad).any(|(c, r)| dist(p, c) <= *r))
                .count();
            n as f64 / q.len() as f64
        };
        let want = (cover(&g, &r, &radii(&r)), cover(&r, &g, &radii(&g)));
        assert!(
            want.0 > 0.0 && want.0 < 1.0 && want.1 > 0.0 && want.1 < 1.0,
            "{want:?}"
        );
        for block in [1, 7, 53 * 5, BLOCK_ELEMENTS] {
            let pr = precision_recall_in_blocks(&real, &generated, NEIGHBOURS, block).unwrap();
            assert_eq!((pr.precision, pr.recall), want, "block {block}");
        }
    }

    #[test]
    fn too_few_points_and_mismatched_widths_are_errors() {
        let bad = [
            precision_recall(&grid(3, 2, 0.0), &grid(10, 2, 0.0), NEIGHBOURS),
            precision_recall(&grid(10, 2, 0.0), &grid(3, 2, 0.0), NEIGHBOURS),
            precision_recall(&grid(10, 2, 0.0), &grid(10, 3, 0.0), NEIGHBOURS),
            precision_recall(
                &grid(10, 2, 0.0).reshape([20]),
                &grid(10, 2, 0.0),
                NEIGHBOURS,
            ),
            precision_recall(&grid(10, 2, 0.0), &grid(10, 2, 0.0), 0),
        ];
        for r in bad {
            assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
        }
        // k + 1 points is enough.
        assert!(precision_recall(&grid(4, 2, 0.0), &grid(4, 2, 0.0), NEIGHBOURS).is_ok());
    }
}
