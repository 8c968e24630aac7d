//! How close generated count vectors are to held-out data: the earth mover's distance (W1) of
//! every column's marginal (`diffuse_core::poisson::emd`), with two bounds that say what a value
//! means for this data: the EMD of the training rows themselves against the held-out rows (what a
//! perfect model scores, up to sampling noise) and the EMD of independent Poisson draws with each
//! column's held-out mean (what a model that learned only the means scores). Also the fraction of
//! exact zeros per column, which sparse count data lives or dies by, and a PNG of the histograms.

use diffuse_core::poisson::emd::marginal_emd;
use diffuse_tensor::plot::{save_count_histograms, HistogramPanel};
use diffuse_tensor::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{Kind, Tensor};

/// One column of an [`EmdReport`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColumnReport {
    pub name: String,
    pub emd: f64,
    pub held_out_mean: f64,
    pub generated_mean: f64,
    pub held_out_zeros: f64,
    pub generated_zeros: f64,
}

/// The comparison of a generated table with held-out data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmdReport {
    /// Mean EMD over the columns.
    pub mean_emd: f64,
    /// The same for the training rows against the held-out rows (`None` without training rows).
    pub train_floor: Option<f64>,
    /// The same for independent Poisson draws with the held-out column means.
    pub poisson_baseline: f64,
    pub generated_rows: usize,
    pub held_out_rows: usize,
    pub columns: Vec<ColumnReport>,
}

impl EmdReport {
    /// One line for people.
    pub fn summary(&self) -> String {
        let floor = self
            .train_floor
            .map_or(String::new(), |f| format!(", training rows {f:.4}"));
        format!(
            "mean earth mover's distance {:.4} over {} columns ({} generated vs {} held-out rows; \
             independent Poisson with the right means {:.4}{floor})",
            self.mean_emd,
            self.columns.len(),
            self.generated_rows,
            self.held_out_rows,
            self.poisson_baseline
        )
    }
}

fn column_stats(x: &Tensor) -> (Vec<f64>, Vec<f64>) {
    let x = x.to_kind(Kind::Double);
    let means = Vec::<f64>::try_from(x.mean_dim(0, false, Kind::Double)).expect("means");
    let zeros = Vec::<f64>::try_from(x.eq(0.0).to_kind(Kind::Double).mean_dim(
        0,
        false,
        Kind::Double,
    ))
    .expect("zeros");
    (means, zeros)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Compare `generated` `[N, D]` with `held_out` `[M, D]` (and `train` rows for the floor).
/// The Poisson baseline draws from libtorch's generator (seed it for repeatable reports).
pub fn emd_report(
    generated: &Tensor,
    held_out: &Tensor,
    train: Option<&Tensor>,
    columns: &[String],
) -> EmdReport {
    let emd = marginal_emd(generated, held_out);
    let (h_means, h_zeros) = column_stats(held_out);
    let (g_means, g_zeros) = column_stats(generated);
    let rate = Tensor::from_slice(&h_means)
        .to_kind(Kind::Float)
        .unsqueeze(0)
        .expand([generated.size()[0], h_means.len() as i64], false)
        .contiguous();
    let baseline = marginal_emd(&rate.poisson(), held_out);
    let floor = train.map(|t| mean(&marginal_emd(t, held_out)));
    EmdReport {
        mean_emd: mean(&emd),
        train_floor: floor,
        poisson_baseline: mean(&baseline),
        generated_rows: generated.size()[0] as usize,
        held_out_rows: held_out.size()[0] as usize,
        columns: (0..emd.len())
            .map(|c| ColumnReport {
                name: columns.get(c).cloned().unwrap_or_else(|| format!("c{c}")),
                emd: emd[c],
                held_out_mean: h_means[c],
                generated_mean: g_means[c],
                held_out_zeros: h_zeros[c],
                generated_zeros: g_zeros[c],
            })
            .collect(),
    }
}

/// Histograms of the generated and held-out columns (the first 16), titled with each EMD.
pub fn save_histograms(
    generated: &Tensor,
    held_out: &Tensor,
    report: &EmdReport,
    title: &str,
    path: &Path,
) -> Result<()> {
    let columns = |x: &Tensor| -> Vec<Vec<f64>> {
        let x = x.to_kind(Kind::Double).tr().contiguous();
        (0..x.size()[0].min(16))
            .map(|c| Vec::<f64>::try_from(x.get(c)).expect("column"))
            .collect()
    };
    let (g, h) = (columns(generated), columns(held_out));
    let panels: Vec<HistogramPanel> = g
        .into_iter()
        .zip(h)
        .zip(&report.columns)
        .map(|((generated, reference), c)| HistogramPanel {
            title: format!("{}  EMD {:.3}", c.name, c.emd),
            reference,
            generated,
        })
        .collect();
    save_count_histograms(&panels, title, path)
}
