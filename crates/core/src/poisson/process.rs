//! The forward thinning process, what the network sees and predicts, and the training losses.
//!
//! Two forms of thinning:
//! - [`Thinning::Binomial`]: z_t ~ Binomial(x_0, alpha_t) for integer x_0 (each unit survives
//!   with probability alpha_t), so z_0 = x_0 exactly and likelihoods are defined. Given x_0, the
//!   step back from t to s < t adds Binomial(x_0 - z_t, (alpha_s - alpha_t) / (1 - alpha_t)) units
//!   (the binomial bridge of a death process; Santos et al. 2023, "Blackout Diffusion").
//! - [`Thinning::Poisson`]: z_t ~ Poisson(lambda alpha_t x_0) for any x_0 >= 0 (JUMP, Chen & Zhou
//!   2023, eq. 4-6): Poisson thinning leaves independent increments, so the step back adds
//!   Poisson(lambda (alpha_s - alpha_t) x_0) units whatever z_t is. Samples are z_0 / lambda.
//!
//! In both, the reverse step with x_0 replaced by the network's estimate is a thickening of
//! z_t; training minimises the KL between the true and the model's thickening, which for Poisson
//! thickening rates mu and mu_hat is mu log(mu / mu_hat) - mu + mu_hat ([`super::poisson_kl`]):
//! JUMP's loss for Poisson thinning, and for binomial thinning the Poisson (continuous-time)
//! limit of the bridge, Blackout's loss on the expected number of births.

use super::schedule::{self, AlphaSchedule};
use super::{as_float, poisson_kl, CountDenoiser};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Which thinning (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Thinning {
    Binomial,
    Poisson,
}

/// What the network's output means (with s the config's `scale`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JumpPrediction {
    /// x_0 itself: x_0_hat = s softplus(out) (JUMP's softplus output). Under binomial thinning,
    /// where x_0 >= z_t is known, x_0_hat = z_t + s softplus(out - z_t / s): the same for x_0 >> z_t
    /// and never below z_t, with gradients everywhere.
    X0,
    /// The standardised residual eps = (z_t - r x_0) / sqrt(r), r = lambda alpha_t, as JUMP's
    /// `eps` prediction: x_0_hat = z_t / r - eps / sqrt(r), clamped at 0 (at z_t under binomial
    /// thinning).
    Eps,
    /// Binomial thinning only: the units that died, x_0 - z_t (Blackout's target):
    /// x_0_hat = z_t + s softplus(out).
    Deaths,
}

impl JumpPrediction {
    pub const NAMES: [&'static str; 3] = ["x0", "eps", "deaths"];

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "x0" | "x_0" | "sample" => Ok(JumpPrediction::X0),
            "eps" | "epsilon" => Ok(JumpPrediction::Eps),
            "deaths" => Ok(JumpPrediction::Deaths),
            other => Err(Error::InvalidArgument(format!(
                "--jump-prediction: unknown parameterisation {other:?} for count diffusion; \
                 expected one of {}",
                Self::NAMES.join(", ")
            ))),
        }
    }
}

/// The training loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JumpLoss {
    /// The bound's own weighting: T times the mean over elements of KL between the true and the
    /// model's one-step thickening (an unbiased estimate of the T thickening terms, nats/element).
    Kl,
    /// The same KL with the per-step rate factor removed (JUMP's `kl_simple`, every step weighted
    /// alike, as DDPM's L_simple), divided by `scale`.
    KlSimple,
}

impl JumpLoss {
    pub const NAMES: [&'static str; 2] = ["kl", "kl-simple"];

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "kl" => Ok(JumpLoss::Kl),
            "kl-simple" => Ok(JumpLoss::KlSimple),
            other => Err(Error::InvalidArgument(format!(
                "--jump-loss: unknown count-diffusion loss {other:?}; expected one of {}",
                Self::NAMES.join(", ")
            ))),
        }
    }
}

/// Everything that defines a count-diffusion process; saved with a model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JumpConfig {
    pub thinning: Thinning,
    pub num_train_timesteps: usize,
    pub alpha_schedule: AlphaSchedule,
    /// beta_1 of the beta-linear schedule.
    pub beta_start: f64,
    /// log-SNR at t = 0, log(lambda m): sets lambda for Poisson thinning (unused by binomial
    /// thinning, where lambda = 1).
    pub logsnr_start: f64,
    /// log-SNR at t = T, log(lambda alpha_T m): sets alpha_T.
    pub logsnr_end: f64,
    /// Poisson thinning: lambda given outright instead of through `logsnr_start`.
    pub lambda: Option<f64>,
    /// The data's mean per element, m (filled in from the training data).
    pub signal_mean: f64,
    /// Data units per network unit: inputs are divided and outputs multiplied by it (255 for
    /// 8-bit images, about the data's spread for count tables).
    pub scale: f64,
    /// The network input z_t / (lambda alpha_t) / scale is clamped to [0, input_clip]: late in
    /// the chain a single surviving unit would otherwise read as a huge value.
    pub input_clip: f64,
    /// Sampling clamps x_0_hat to at most this (255 for 8-bit images); `None`: no bound.
    pub clip_max: Option<f64>,
    pub prediction: JumpPrediction,
    pub loss: JumpLoss,
}

impl Default for JumpConfig {
    fn default() -> Self {
        JumpConfig {
            thinning: Thinning::Binomial,
            num_train_timesteps: 1000,
            alpha_schedule: AlphaSchedule::BetaLinear,
            beta_start: 0.001,
            logsnr_start: 10.0,
            logsnr_end: -12.0,
            lambda: None,
            signal_mean: 1.0,
            scale: 1.0,
            input_clip: 2.0,
            clip_max: None,
            prediction: JumpPrediction::X0,
            loss: JumpLoss::Kl,
        }
    }
}

/// A count-diffusion process: its config and schedule tables.
#[derive(Clone, Debug)]
pub struct JumpProcess {
    config: JumpConfig,
    lambda: f64,
    /// alpha_0..=alpha_T.
    alphas: Vec<f64>,
}

impl JumpProcess {
    pub fn new(config: JumpConfig) -> Result<Self> {
        let c = &config;
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(Error::InvalidArgument(format!(
                    "{name}: must be a positive number, got {v}"
                )))
            }
        };
        positive("the data mean (signal_mean)", c.signal_mean)?;
        positive("--scale", c.scale)?;
        positive("--input-clip", c.input_clip)?;
        if let Some(m) = c.clip_max {
            positive("clip_max", m)?;
        }
        if c.prediction == JumpPrediction::Deaths && c.thinning != Thinning::Binomial {
            return Err(Error::InvalidArgument(
                "--jump-prediction deaths: needs --thinning binomial (under Poisson thinning \
                 the removed units are not a count of the data)"
                    .into(),
            ));
        }
        let lambda = match (c.thinning, c.lambda) {
            (Thinning::Binomial, _) => 1.0,
            (Thinning::Poisson, Some(l)) => {
                positive("--lambda", l)?;
                l
            }
            (Thinning::Poisson, None) => {
                schedule::lambda_from_logsnr(c.logsnr_start, c.signal_mean)
            }
        };
        let alpha_end = schedule::alpha_end_from_logsnr(c.logsnr_end, lambda, c.signal_mean);
        let alphas = schedule::alphas(
            c.alpha_schedule,
            c.num_train_timesteps,
            alpha_end,
            c.beta_start,
        )?;
        Ok(JumpProcess {
            config,
            lambda,
            alphas,
        })
    }

    pub fn config(&self) -> &JumpConfig {
        &self.config
    }

    /// T.
    pub fn timesteps(&self) -> usize {
        self.alphas.len() - 1
    }

    /// lambda (1 under binomial thinning).
    pub fn lambda(&self) -> f64 {
        self.lambda
    }

    /// alpha_0..=alpha_T.
    pub fn alphas(&self) -> &[f64] {
        &self.alphas
    }

    pub fn thinning(&self) -> Thinning {
        self.config.thinning
    }

    /// Per-example values (one per row of `like`) as a tensor broadcasting against `like`.
    fn per_example(values: &[f64], like: &Tensor) -> Tensor {
        let mut shape = vec![values.len() as i64];
        shape.extend(std::iter::repeat_n(1, like.dim().saturating_sub(1)));
        Tensor::from_slice(values)
            .to_kind(as_float(like).kind())
            .to_device(like.device())
            .reshape(&shape)
    }

    fn alphas_at(&self, t: &[usize], like: &Tensor) -> Tensor {
        let v: Vec<f64> = t.iter().map(|&t| self.alphas[t]).collect();
        Self::per_example(&v, like)
    }

    /// Check `x0` is a tensor of non-negative counts (whole numbers under binomial thinning).
    pub fn check_data(&self, x0: &Tensor) -> Result<()> {
        let x = as_float(x0);
        if x.numel() == 0 {
            return Ok(());
        }
        let min = x.min().double_value(&[]);
        if min.is_nan() || min < 0.0 {
            return Err(Error::InvalidArgument(format!(
                "count diffusion needs non-negative data, found {min}"
            )));
        }
        if x.isfinite().all().int64_value(&[]) == 0 {
            return Err(Error::InvalidArgument(
                "count diffusion needs finite data".into(),
            ));
        }
        if self.config.thinning == Thinning::Binomial {
            let off = (&x - x.round()).abs().max().double_value(&[]);
            if off > 1e-6 {
                return Err(Error::InvalidArgument(
                    "binomial thinning needs whole-number counts; use --thinning poisson for \
                     non-integer data"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// Draw z_t ~ q(z_t | x_0), one timestep per example (t in 0..=T; t = 0 gives x_0 under
    /// binomial thinning and Poisson(lambda x_0) under Poisson thinning).
    pub fn q_sample(&self, x0: &Tensor, t: &[usize]) -> Tensor {
        let x0 = as_float(x0);
        let alpha = self.alphas_at(t, &x0);
        match self.config.thinning {
            Thinning::Binomial => {
                let prob = alpha.expand_as(&x0).contiguous();
                Tensor::binomial(&x0.round(), &prob)
            }
            Thinning::Poisson => (x0 * alpha * self.lambda).poisson(),
        }
    }

    /// What the network sees: z_t / (lambda alpha_t) (an unbiased estimate of x_0) in network
    /// units, clamped to [0, input_clip].
    pub fn network_input(&self, z_t: &Tensor, t: &[usize]) -> Tensor {
        let z = as_float(z_t);
        let rate = self.alphas_at(t, &z) * (self.lambda * self.config.scale);
        (z / rate).clamp(0.0, self.config.input_clip)
    }

    /// The timestep input, `t - 1` as f32 on `device` (t in 1..=T).
    pub fn network_time(&self, t: &[usize], device: Device) -> Tensor {
        let v: Vec<f32> = t.iter().map(|&t| t.saturating_sub(1) as f32).collect();
        Tensor::from_slice(&v).to_device(device)
    }

    /// x_0_hat from the network output (see [`JumpPrediction`]); >= 0, and >= z_t under
    /// binomial thinning.
    pub fn predict_x0(&self, output: &Tensor, z_t: &Tensor, t: &[usize]) -> Tensor {
        let z = as_float(z_t);
        let out = output.to_kind(z.kind());
        let s = self.config.scale;
        let binomial = self.config.thinning == Thinning::Binomial;
        match self.config.prediction {
            JumpPrediction::X0 if binomial => &z + (out - &z / s).softplus() * s,
            JumpPrediction::X0 => out.softplus() * s,
            JumpPrediction::Deaths => &z + out.softplus() * s,
            JumpPrediction::Eps => {
                let rate = self.alphas_at(t, &z) * self.lambda;
                let x0 = &z / &rate - out / rate.sqrt();
                if binomial {
                    x0.maximum(&z)
                } else {
                    x0.clamp_min(0.0)
                }
            }
        }
    }

    /// Mean number of units the step back from t to s adds, given x_0 (`x0`, data units) and z_t:
    /// Poisson thinning lambda (alpha_s - alpha_t) x_0; binomial thinning
    /// (alpha_s - alpha_t) / (1 - alpha_t) (x_0 - z_t).
    pub fn thickening_rate(&self, x0: &Tensor, z_t: &Tensor, t: &[usize], s: &[usize]) -> Tensor {
        let z = as_float(z_t);
        let factor = self.rate_factor(t, s, &z);
        match self.config.thinning {
            Thinning::Poisson => x0 * factor,
            Thinning::Binomial => (x0 - &z).clamp_min(0.0) * factor,
        }
    }

    /// The per-example factor of [`Self::thickening_rate`].
    fn rate_factor(&self, t: &[usize], s: &[usize], like: &Tensor) -> Tensor {
        let v: Vec<f64> = t
            .iter()
            .zip(s)
            .map(|(&t, &s)| {
                let (at, as_) = (self.alphas[t], self.alphas[s]);
                match self.config.thinning {
                    Thinning::Poisson => self.lambda * (as_ - at),
                    Thinning::Binomial => (as_ - at) / (1.0 - at),
                }
            })
            .collect();
        Self::per_example(&v, like)
    }

    /// Uniform timesteps in 1..=T from libtorch's generator.
    pub fn sample_timesteps(&self, batch: i64) -> Vec<usize> {
        let t = Tensor::randint(self.timesteps() as i64, [batch], (Kind::Int64, Device::Cpu)) + 1;
        Vec::<i64>::try_from(t)
            .expect("timesteps")
            .into_iter()
            .map(|t| t as usize)
            .collect()
    }

    /// The training loss of a batch `x0` (counts, data units) at fresh uniform timesteps.
    pub fn loss(&self, model: &dyn CountDenoiser, x0: &Tensor) -> Tensor {
        let t = self.sample_timesteps(x0.size()[0]);
        self.loss_at(model, x0, &t)
    }

    /// The training loss at the given timesteps (t in 1..=T per example).
    pub fn loss_at(&self, model: &dyn CountDenoiser, x0: &Tensor, t: &[usize]) -> Tensor {
        let x0 = as_float(x0);
        let z_t = self.q_sample(&x0, t);
        let input = self.network_input(&z_t, t);
        let time = self.network_time(t, x0.device());
        let output = model.forward(&input, &time);
        let x0_hat = self.predict_x0(&output, &z_t, t);
        match self.config.loss {
            JumpLoss::Kl => {
                let s: Vec<usize> = t.iter().map(|&t| t - 1).collect();
                let mu = self.thickening_rate(&x0, &z_t, t, &s);
                let mu_hat = self.thickening_rate(&x0_hat, &z_t, t, &s);
                poisson_kl(&mu, &mu_hat).mean(Kind::Float) * self.timesteps() as f64
            }
            JumpLoss::KlSimple => {
                let (target, pred) = match self.config.thinning {
                    Thinning::Poisson => (x0, x0_hat),
                    Thinning::Binomial => (&x0 - &z_t, (x0_hat - &z_t).clamp_min(0.0)),
                };
                poisson_kl(&target, &pred).mean(Kind::Float) / self.config.scale
            }
        }
    }

    /// The model's x_0 estimate at step t for the latent z_t (no gradients needed by callers
    /// that sample), clamped to `clip_max`.
    pub fn estimate_x0(&self, model: &dyn CountDenoiser, z_t: &Tensor, t: usize) -> Tensor {
        let batch = z_t.size()[0] as usize;
        let ts = vec![t; batch];
        let input = self.network_input(z_t, &ts);
        let output = model.forward(&input, &self.network_time(&ts, z_t.device()));
        let x0 = self.predict_x0(&output, z_t, &ts);
        match self.config.clip_max {
            Some(m) => x0.clamp_max(m),
            None => x0,
        }
    }
}
