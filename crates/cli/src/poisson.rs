//! The count-diffusion flags shared by `diffuse train image --process poisson` and
//! `diffuse train counts`: which thinning, the survival schedule and its log-SNR endpoints, the
//! parameterisation and the loss. The training timesteps and beta_start come from each command's
//! own `--num-train-timesteps` / `--beta-start`.

use anyhow::{anyhow, bail, Result};
use clap::Args;
use diffuse_core::poisson::{AlphaSchedule, JumpConfig, JumpLoss, JumpPrediction, Thinning};

#[derive(Args, Clone, Debug)]
pub struct JumpArgs {
    /// Count diffusion: binomial (each unit of count survives with probability alpha_t; exact at
    /// step 0, gives bits/dim) or poisson (JUMP's Poisson(lambda alpha_t x_0); any x_0 >= 0).
    #[arg(long, default_value = "binomial")]
    pub thinning: String,
    /// Count diffusion: the survival schedule alpha_t: beta-linear, log-linear or cosine.
    #[arg(long, default_value = "beta-linear")]
    pub alpha_schedule: String,
    /// Count diffusion: log-SNR log(lambda m) at t = 0 (m = the data mean); sets lambda under
    /// Poisson thinning.
    #[arg(long, default_value_t = 10.0, allow_hyphen_values = true)]
    pub logsnr_start: f64,
    /// Count diffusion: log-SNR log(lambda alpha_T m) at t = T; sets alpha_T.
    #[arg(long, default_value_t = -12.0, allow_hyphen_values = true)]
    pub logsnr_end: f64,
    /// Count diffusion, Poisson thinning: lambda itself (instead of --logsnr-start).
    #[arg(long)]
    pub lambda: Option<f64>,
    /// Count diffusion: what the network predicts: x0, eps (JUMP's standardised residual) or
    /// deaths (binomial thinning: the units thinned away, as Blackout Diffusion).
    #[arg(long, default_value = "x0")]
    pub jump_prediction: String,
    /// Count diffusion: kl (the bound's weighting) or kl-simple (every step weighted alike).
    #[arg(long, default_value = "kl")]
    pub jump_loss: String,
}

impl JumpArgs {
    /// Write the flags into `config` (which holds the modality's defaults for scale and clips).
    pub fn apply(
        &self,
        config: &mut JumpConfig,
        num_train_timesteps: Option<usize>,
        beta_start: Option<f64>,
    ) -> Result<()> {
        config.thinning = match self.thinning.as_str() {
            "binomial" => Thinning::Binomial,
            "poisson" => Thinning::Poisson,
            other => bail!("--thinning: unknown thinning '{other}' (expected binomial or poisson)"),
        };
        config.alpha_schedule = AlphaSchedule::parse(&self.alpha_schedule)?;
        for (flag, v) in [
            ("--logsnr-start", self.logsnr_start),
            ("--logsnr-end", self.logsnr_end),
        ] {
            if !v.is_finite() {
                bail!("{flag}: must be a finite number, got {v}");
            }
        }
        if self.logsnr_end >= self.logsnr_start {
            bail!(
                "--logsnr-end ({}) must be below --logsnr-start ({})",
                self.logsnr_end,
                self.logsnr_start
            );
        }
        config.logsnr_start = self.logsnr_start;
        config.logsnr_end = self.logsnr_end;
        if let Some(l) = self.lambda {
            if !(l.is_finite() && l > 0.0) {
                bail!("--lambda: must be a positive number, got {l}");
            }
            if config.thinning != Thinning::Poisson {
                bail!("--lambda: applies to --thinning poisson (binomial thinning has lambda = 1)");
            }
        }
        config.lambda = self.lambda;
        config.prediction =
            JumpPrediction::parse(&self.jump_prediction).map_err(|e| anyhow!("{e}"))?;
        config.loss = JumpLoss::parse(&self.jump_loss).map_err(|e| anyhow!("{e}"))?;
        if config.prediction == JumpPrediction::Deaths && config.thinning != Thinning::Binomial {
            bail!("--jump-prediction deaths: needs --thinning binomial");
        }
        if let Some(t) = num_train_timesteps {
            if t == 0 {
                bail!("--num-train-timesteps: must be at least 1");
            }
            config.num_train_timesteps = t;
        }
        if let Some(b) = beta_start {
            if !(0.0..1.0).contains(&b) {
                bail!("--beta-start: must lie in [0, 1), got {b}");
            }
            config.beta_start = b;
        }
        Ok(())
    }
}
