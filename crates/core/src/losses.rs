//! Training objectives for Gaussian diffusion in discrete time: the denoising loss on the chosen
//! target (epsilon, x0 or v) with its SNR weightings, offset noise, and uniform or importance-sampled
//! timesteps.
//!
//! L_simple (Ho et al. 2020, eq. 14) regresses the model output on the target at a random timestep.
//! Weightings: min-SNR-gamma (Hang et al. 2023, eq. 9, expressed per target so that all three
//! parameterisations optimise the same x0 weighting min(SNR, gamma)) and its soft variant
//! SNR gamma / (SNR + gamma) (Crowson et al. 2024, HDiT). Importance sampling of timesteps by the
//! loss's second moment follows Nichol & Dhariwal 2021, sec. 3.3.

use crate::denoiser::Denoiser;
use crate::prediction::PredictionType;
use crate::samplers::ddpm::VarianceType;
use crate::schedule::NoiseSchedule;
use crate::vlb::{hybrid_terms, VlbTables};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// How each timestep's squared error is weighted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Weighting {
    /// Plain mean squared error on the target (L_simple).
    #[default]
    Uniform,
    /// x0-space weight min(SNR, gamma) (gamma = 5 in the paper).
    MinSnr { gamma: f64 },
    /// x0-space weight SNR gamma / (SNR + gamma), a smooth min-SNR.
    SoftMinSnr { gamma: f64 },
}

impl Weighting {
    /// The weight on the squared error of `target`'s parameterisation at signal-to-noise `snr`.
    /// An x0-space weight w(SNR) becomes w / SNR on epsilon errors and w / (SNR + 1) on v errors,
    /// since |eps error|^2 = SNR |x0 error|^2 and |v error|^2 = (SNR + 1) |x0 error|^2.
    pub fn weight(self, target: PredictionType, snr: f64) -> f64 {
        let x0_weight = match self {
            Weighting::Uniform => return 1.0,
            Weighting::MinSnr { gamma } => snr.min(gamma),
            Weighting::SoftMinSnr { gamma } => snr * gamma / (snr + gamma),
        };
        match target {
            PredictionType::Sample => x0_weight,
            PredictionType::Epsilon => x0_weight / snr,
            PredictionType::VPrediction => x0_weight / (snr + 1.0),
        }
    }
}

/// How training timesteps are drawn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSampling {
    #[default]
    Uniform,
    /// Proportional to the root mean square of each timestep's recent losses, reweighted to stay
    /// unbiased (Nichol & Dhariwal 2021, eq. 18); uniform until every timestep has 10 losses.
    LossSecondMoment,
}

/// The denoising objective's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ObjectiveConfig {
    pub prediction_type: PredictionType,
    pub weighting: Weighting,
    pub timestep_sampling: TimestepSampling,
    /// Offset noise (Guttenberg 2023): add this times per-channel constant noise, so the model
    /// learns to change an image's mean brightness. 0 disables it; 0.1 is the usual value.
    pub offset_noise: f64,
    /// Train a learned variance with the hybrid loss (model outputs 2C channels).
    pub learned_variance: Option<LearnedVariance>,
    /// Self-conditioning (Chen et al. 2022): on half the batches, first estimate x0 without
    /// gradients and feed it back; the model must report `self_conditioning()`.
    pub self_conditioning: bool,
}

/// The hybrid objective's settings: which learned variance, and the bound's weight lambda.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LearnedVariance {
    pub variance_type: VarianceType,
    pub lambda: f64,
}

impl Default for LearnedVariance {
    fn default() -> Self {
        LearnedVariance {
            variance_type: VarianceType::LearnedRange,
            lambda: 0.001,
        }
    }
}

impl Default for ObjectiveConfig {
    fn default() -> Self {
        ObjectiveConfig {
            prediction_type: PredictionType::Epsilon,
            weighting: Weighting::Uniform,
            timestep_sampling: TimestepSampling::Uniform,
            offset_noise: 0.0,
            learned_variance: None,
            self_conditioning: false,
        }
    }
}

const HISTORY: usize = 10;
const UNIFORM_PROB: f64 = 0.001;

/// The loss-second-moment resampler's per-timestep loss history.
#[derive(Clone, Debug)]
pub struct LossSecondMoment {
    history: Vec<Vec<f64>>,
}

impl LossSecondMoment {
    pub fn new(timesteps: usize) -> Self {
        LossSecondMoment {
            history: vec![Vec::with_capacity(HISTORY); timesteps],
        }
    }

    fn warm(&self) -> bool {
        self.history.iter().all(|h| h.len() == HISTORY)
    }

    /// Sampling probabilities of each timestep.
    pub fn probabilities(&self) -> Vec<f64> {
        let n = self.history.len();
        if !self.warm() {
            return vec![1.0 / n as f64; n];
        }
        let rms: Vec<f64> = self
            .history
            .iter()
            .map(|h| (h.iter().map(|l| l * l).sum::<f64>() / h.len() as f64).sqrt())
            .collect();
        let total: f64 = rms.iter().sum();
        rms.iter()
            .map(|w| w / total * (1.0 - UNIFORM_PROB) + UNIFORM_PROB / n as f64)
            .collect()
    }

    /// Record the losses seen at these timesteps (keeping the last 10 of each).
    pub fn update(&mut self, timesteps: &[i64], losses: &[f64]) {
        for (&t, &l) in timesteps.iter().zip(losses) {
            let h = &mut self.history[t as usize];
            if h.len() == HISTORY {
                h.remove(0);
            }
            h.push(l);
        }
    }
}

/// The training loss of a Gaussian diffusion model over a discrete schedule.
pub struct Objective {
    pub config: ObjectiveConfig,
    schedule: NoiseSchedule,
    resampler: Option<LossSecondMoment>,
    vlb: Option<VlbTables>,
}

/// What one loss evaluation drew and computed (for logging and tests).
pub struct LossOutput {
    /// Scalar loss to back-propagate.
    pub loss: Tensor,
    /// Timesteps drawn, one per example.
    pub timesteps: Vec<i64>,
    /// Per-example weighted losses (detached).
    pub per_example: Vec<f64>,
}

impl Objective {
    pub fn new(schedule: NoiseSchedule, config: ObjectiveConfig) -> Result<Self> {
        if !(config.offset_noise >= 0.0 && config.offset_noise.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "offset noise must be >= 0, got {}",
                config.offset_noise
            )));
        }
        match config.weighting {
            Weighting::MinSnr { gamma } | Weighting::SoftMinSnr { gamma }
                if gamma.is_nan() || gamma <= 0.0 =>
            {
                return Err(Error::InvalidArgument(format!(
                    "the SNR weighting's gamma must be > 0, got {gamma}"
                )))
            }
            _ => {}
        }
        let resampler = (config.timestep_sampling == TimestepSampling::LossSecondMoment)
            .then(|| LossSecondMoment::new(schedule.len()));
        if let Some(lv) = &config.learned_variance {
            if !lv.variance_type.is_learned() || lv.lambda.is_nan() || lv.lambda < 0.0 {
                return Err(Error::InvalidArgument(format!(
                    "learned variance needs variance type learned or learned_range and lambda >= 0, got {:?} and {}",
                    lv.variance_type, lv.lambda
                )));
            }
        }
        let vlb = config
            .learned_variance
            .map(|_| VlbTables::new(schedule.clone()));
        Ok(Objective {
            config,
            schedule,
            resampler,
            vlb,
        })
    }

    pub fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    /// Chen et al. 2022, algorithm 1: with probability 1/2 the model first sees zeros as its
    /// previous estimate, and its x0 estimate (no gradient) is fed back for the pass that is trained.
    fn self_conditioned_forward(
        &self,
        model: &dyn Denoiser,
        x_t: &Tensor,
        t: &Tensor,
        alpha: &Tensor,
        sigma: &Tensor,
    ) -> Result<Tensor> {
        if !model.self_conditioning() {
            return Err(Error::InvalidArgument(
                "self-conditioning was asked for, but the model takes no previous x0 estimate"
                    .into(),
            ));
        }
        let zeros = x_t.zeros_like();
        let use_estimate = Tensor::rand([1], (Kind::Float, Device::Cpu)).double_value(&[0]) < 0.5;
        if !use_estimate {
            return Ok(model.forward_self_cond(x_t, t, &zeros));
        }
        let channels = x_t.size()[1];
        let first = tch::no_grad(|| model.forward_self_cond(x_t, t, &zeros)).narrow(1, 0, channels);
        let x0_estimate = self
            .config
            .prediction_type
            .to_x0(&first, x_t, alpha, sigma)
            .detach();
        Ok(model.forward_self_cond(x_t, t, &x0_estimate))
    }

    /// Draw timesteps for a batch: (timesteps, importance weights 1 / (T p_t)).
    fn draw_timesteps(&self, batch: i64) -> (Vec<i64>, Vec<f64>) {
        let n = self.schedule.len();
        match &self.resampler {
            None => {
                let t = Tensor::randint(n as i64, [batch], (Kind::Int64, Device::Cpu));
                (
                    Vec::<i64>::try_from(t).expect("int64 timesteps"),
                    vec![1.0; batch as usize],
                )
            }
            Some(r) => {
                let p = r.probabilities();
                let probs = Tensor::from_slice(&p);
                let t = probs.multinomial(batch, true);
                let t = Vec::<i64>::try_from(t).expect("int64 timesteps");
                let w = t
                    .iter()
                    .map(|&i| 1.0 / (n as f64 * p[i as usize]))
                    .collect();
                (t, w)
            }
        }
    }

    /// The loss of `model` on clean data `x0` `[B, ...]`: timesteps and noise drawn from
    /// libtorch's generator (seed it for reproducible training).
    pub fn loss(&mut self, model: &dyn Denoiser, x0: &Tensor) -> Result<LossOutput> {
        let p = self.config.prediction_type;
        if model.prediction_type() != p {
            return Err(Error::InvalidArgument(format!(
                "the model predicts {:?} but the objective trains {:?}",
                model.prediction_type(),
                p
            )));
        }
        let size = x0.size();
        let batch = size[0];
        let (timesteps, importance) = self.draw_timesteps(batch);
        let mut noise = Tensor::randn_like(x0);
        if self.config.offset_noise > 0.0 && size.len() >= 3 {
            let mut offset_shape = vec![batch, size[1]];
            offset_shape.extend(std::iter::repeat_n(1, size.len() - 2));
            noise +=
                Tensor::randn(&offset_shape, (x0.kind(), x0.device())) * self.config.offset_noise;
        }
        let t_f64: Vec<f64> = timesteps.iter().map(|&t| t as f64).collect();
        let (alpha, sigma) = self.schedule.alpha_sigma(&t_f64, x0.device(), size.len());
        let (alpha, sigma) = (alpha.to_kind(x0.kind()), sigma.to_kind(x0.kind()));
        let x_t = &alpha * x0 + &sigma * &noise;
        let target = p.target(x0, &noise, &alpha, &sigma);
        let t_in = Tensor::from_slice(&t_f64)
            .to_kind(Kind::Float)
            .to_device(x0.device());
        let pred = if self.config.self_conditioning {
            self.self_conditioned_forward(model, &x_t, &t_in, &alpha, &sigma)?
        } else {
            model.forward(&x_t, &t_in)
        };
        let (mse, vb) = match (&self.vlb, self.config.learned_variance) {
            (Some(tables), Some(lv)) => {
                let (mse, vb) = hybrid_terms(
                    tables,
                    &pred,
                    &target,
                    x0,
                    &x_t,
                    &timesteps,
                    p,
                    lv.variance_type,
                )?;
                (mse, Some(vb * (lv.lambda * self.schedule.len() as f64)))
            }
            _ => {
                if pred.size() != size {
                    return Err(Error::InvalidArgument(format!(
                        "the model returned shape {:?} for inputs of shape {size:?}",
                        pred.size()
                    )));
                }
                let dims: Vec<i64> = (1..size.len() as i64).collect();
                (
                    pred.g_sub(&target).square().mean_dim(
                        Some(dims.as_slice()),
                        false,
                        Kind::Float,
                    ),
                    None,
                )
            }
        };
        let weights: Vec<f64> = timesteps
            .iter()
            .zip(&importance)
            .map(|(&t, &w)| {
                let abar = self.schedule.alphas_cumprod()[t as usize];
                w * self.config.weighting.weight(p, abar / (1.0 - abar))
            })
            .collect();
        let weights = Tensor::from_slice(&weights)
            .to_kind(Kind::Float)
            .to_device(x0.device());
        let mut per_example = &mse * weights;
        if let Some(vb) = vb {
            per_example += vb;
        }
        let values = Vec::<f64>::try_from(
            per_example
                .detach()
                .to_kind(Kind::Double)
                .to_device(Device::Cpu),
        )
        .expect("per-example losses");
        if let Some(r) = &mut self.resampler {
            let raw =
                Vec::<f64>::try_from(mse.detach().to_kind(Kind::Double).to_device(Device::Cpu))
                    .expect("per-example losses");
            r.update(&timesteps, &raw);
        }
        Ok(LossOutput {
            loss: per_example.mean(Kind::Float),
            timesteps,
            per_example: values,
        })
    }
}
