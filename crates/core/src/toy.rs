//! Toy 2-D data and a small MLP denoiser: the learning tests, the sampler-quality benchmark and
//! quick experiments use them to check that training and sampling recover a known distribution.
//!
//! Data: a ring of 8 Gaussians (radius 1.5, std 0.1, equal weights) and a swiss roll. Each is cut
//! into 8 equal-mass "modes" so a sample set can be scored by how well it spreads its mass.

use crate::denoiser::Denoiser;
use crate::losses::{Objective, ObjectiveConfig};
use crate::prediction::PredictionType;
use crate::schedule::NoiseSchedule;
use crate::Result;
use diffuse_tensor::ema::{Ema, EmaConfig};
use diffuse_tensor::lr::{LrSchedule, LrScheduleKind};
use diffuse_tensor::optim::{AdamW, AdamWConfig};
use std::f64::consts::PI;
use tch::nn::{self, Module, VarStore};
use tch::{Device, Kind, Tensor};

/// Number of modes each toy dataset is scored on.
pub const MODES: i64 = 8;

/// A known 2-D distribution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToyData {
    /// 8 Gaussians on a circle of radius 1.5, std 0.1.
    EightGaussians,
    /// theta ~ U(1.5 pi, 4.5 pi), x = theta (cos theta, sin theta) / 10, plus N(0, 0.02^2).
    SwissRoll,
}

const RADIUS: f64 = 1.5;
/// The standard deviation of each of the 8 Gaussians.
pub const MODE_STD: f64 = 0.1;

fn centers() -> Tensor {
    let angles = Tensor::arange(MODES, (Kind::Float, Device::Cpu)) * (2.0 * PI / MODES as f64);
    Tensor::stack(&[angles.cos(), angles.sin()], 1) * RADIUS
}

fn roll_points(u: &Tensor) -> Tensor {
    let theta = (u * 3.0 + 1.5) * PI;
    Tensor::stack(&[&theta.cos() * &theta, &theta.sin() * &theta], 1) / 10.0
}

impl ToyData {
    /// `batch` samples `[batch, 2]` on the CPU, from libtorch's generator.
    pub fn sample(self, batch: i64) -> Tensor {
        match self {
            ToyData::EightGaussians => {
                let idx = Tensor::randint(MODES, [batch], (Kind::Int64, Device::Cpu));
                centers().index_select(0, &idx)
                    + Tensor::randn([batch, 2], (Kind::Float, Device::Cpu)) * MODE_STD
            }
            ToyData::SwissRoll => {
                let u = Tensor::rand([batch], (Kind::Float, Device::Cpu));
                roll_points(&u) + Tensor::randn([batch, 2], (Kind::Float, Device::Cpu)) * 0.02
            }
        }
    }

    /// (mass of each of the 8 modes, fraction of samples close to the data): nearest centre within
    /// 4 std for the Gaussians; nearest point of the roll within 0.1 for the roll.
    pub fn mode_masses(self, samples: &Tensor) -> (Vec<f64>, f64) {
        let n = samples.size()[0] as f64;
        let (nearest_d, mode, radius) = match self {
            ToyData::EightGaussians => {
                let d = pairwise_distances(samples, &centers());
                let (nd, idx) = d.min_dim(1, false);
                (nd, idx.to_kind(Kind::Float), 4.0 * MODE_STD)
            }
            ToyData::SwissRoll => {
                let grid = 2000;
                let curve = roll_points(&Tensor::linspace(
                    0.0,
                    1.0,
                    grid,
                    (Kind::Float, Device::Cpu),
                ));
                let (nd, idx) = pairwise_distances(samples, &curve).min_dim(1, false);
                let stretch = (idx.to_kind(Kind::Float) * (MODES as f64 / grid as f64))
                    .floor()
                    .clamp(0.0, (MODES - 1) as f64);
                (nd, stretch, 0.1)
            }
        };
        let masses = (0..MODES)
            .map(|m| {
                mode.eq(m as f64)
                    .to_kind(Kind::Float)
                    .sum(Kind::Float)
                    .double_value(&[])
                    / n
            })
            .collect();
        let close = nearest_d
            .le(radius)
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[]);
        (masses, close)
    }
}

fn pairwise_distances(a: &Tensor, b: &Tensor) -> Tensor {
    (a.unsqueeze(1) - b.unsqueeze(0))
        .square()
        .sum_dim_intlist(Some([2i64].as_slice()), false, Kind::Float)
        .sqrt()
}

/// Largest relative error of the mode masses against 1/8.
pub fn mode_mass_error(masses: &[f64]) -> f64 {
    masses
        .iter()
        .map(|m| (m * MODES as f64 - 1.0).abs())
        .fold(0.0, f64::max)
}

/// Squared maximum mean discrepancy (unbiased) between two sample sets `[N, D]`, `[M, D]` under a
/// Gaussian kernel of the given bandwidth (Gretton et al. 2012, eq. 3).
pub fn mmd2(a: &Tensor, b: &Tensor, bandwidth: f64) -> f64 {
    let k = |x: &Tensor, y: &Tensor| {
        (pairwise_distances(x, y).square() / (-2.0 * bandwidth * bandwidth)).exp()
    };
    let (n, m) = (a.size()[0] as f64, b.size()[0] as f64);
    let kaa = k(a, a);
    let kbb = k(b, b);
    let kab = k(a, b);
    let off_diag =
        |kk: &Tensor, n: f64| (kk.sum(Kind::Double).double_value(&[]) - n) / (n * (n - 1.0));
    off_diag(&kaa, n) + off_diag(&kbb, m) - 2.0 * kab.mean(Kind::Double).double_value(&[])
}

/// A 4-layer MLP (128 wide, SiLU) on [x, sinusoidal embedding of t] with `outputs` outputs
/// (2, or 4 with learned variance). Variable names fc0..fc3.{weight,bias}.
pub struct MlpDenoiser {
    layers: Vec<nn::Linear>,
    prediction: PredictionType,
}

impl MlpDenoiser {
    pub fn new(vs: &nn::Path, prediction: PredictionType, outputs: i64) -> Self {
        let dims = [2 + 16, 128, 128, 128, outputs];
        let layers = (0..4)
            .map(|i| {
                nn::linear(
                    vs / format!("fc{i}"),
                    dims[i],
                    dims[i + 1],
                    Default::default(),
                )
            })
            .collect();
        MlpDenoiser { layers, prediction }
    }
}

impl Denoiser for MlpDenoiser {
    fn forward(&self, x: &Tensor, t: &Tensor) -> Tensor {
        // Transformer-style frequencies 1 .. 1/1000 over 8 sines and 8 cosines of the timestep.
        let freqs = (Tensor::arange(8, (Kind::Float, x.device())) * (-(1000f64.ln()) / 8.0)).exp();
        let angles = t.to_kind(Kind::Float).unsqueeze(1) * freqs.unsqueeze(0);
        let mut h = Tensor::cat(&[x.shallow_clone(), angles.sin(), angles.cos()], 1);
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h);
            if i + 1 < self.layers.len() {
                h = h.silu();
            }
        }
        h
    }

    fn prediction_type(&self) -> PredictionType {
        self.prediction
    }
}

/// Train an [`MlpDenoiser`] on `data` with `objective` for `steps` AdamW steps (batch 512, lr 2e-3
/// with warmup and cosine decay), keeping an EMA (decay 0.995) that is copied into the returned
/// weights. Randomness comes from libtorch's generator: seed it first.
pub fn train_toy(
    data: ToyData,
    schedule: NoiseSchedule,
    objective: ObjectiveConfig,
    steps: usize,
) -> Result<(VarStore, MlpDenoiser)> {
    let vs = VarStore::new(Device::Cpu);
    let outputs = if objective.learned_variance.is_some() {
        4
    } else {
        2
    };
    let model = MlpDenoiser::new(&vs.root(), objective.prediction_type, outputs);
    let mut objective = Objective::new(schedule, objective)?;
    let mut opt = AdamW::new(
        &vs,
        AdamWConfig {
            lr: 2e-3,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let lr = LrSchedule {
        kind: LrScheduleKind::Cosine,
        warmup_steps: 50,
        total_steps: steps as u64,
    };
    let mut ema = Ema::new(
        &vs,
        EmaConfig {
            decay: 0.995,
            ..Default::default()
        },
    )?;
    for step in 0..steps {
        opt.zero_grad();
        objective.loss(&model, &data.sample(512))?.loss.backward();
        opt.step(lr.lr(2e-3, step as u64));
        ema.update(&vs);
    }
    ema.copy_to(&vs);
    Ok((vs, model))
}
