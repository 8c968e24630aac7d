//! DPM-Solver multistep (Lu et al. 2022a, "DPM-Solver"; Lu et al. 2022b, "DPM-Solver++") with the
//! options of diffusers' `DPMSolverMultistepScheduler`: orders 1 to 3, the midpoint and Heun
//! second-order forms, the data-prediction (++) and noise-prediction solvers and their SDE variants,
//! Karras, exponential and uniform-lambda sigma spacings, lower-order final steps, dynamic
//! thresholding and lambda clipping.
//!
//! The solver works in the variance-exploding sigma of each timestep, sigma = sqrt((1 - alpha_bar) /
//! alpha_bar), from which alpha_t = 1 / sqrt(sigma^2 + 1), sigma_t = sigma alpha_t and the half log-SNR
//! lambda = ln alpha_t - ln sigma_t; step sizes are h = lambda_next - lambda_now. Coefficients are f64;
//! the update runs in f32 (f64 for f64 samples), as diffusers upcasts.

use super::ddpm::VarianceType;
use super::{dynamic_threshold, index_of, Sampler, StepOutput};
use crate::prediction::PredictionType;
use crate::schedule::{
    exponential_sigmas, karras_sigmas, BetaSchedule, BetaScheduleConfig, NoiseSchedule,
    TimestepSpacing,
};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use tch::{Kind, Tensor};

/// Which integral the solver discretises (diffusers' `algorithm_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlgorithmType {
    /// DPM-Solver++: the ODE in the data prediction x0 (Lu et al. 2022b). diffusers maps DEIS
    /// configs here.
    #[default]
    #[serde(rename = "dpmsolver++", alias = "deis")]
    DpmSolverPlusPlus,
    /// The SDE variant of DPM-Solver++ (stochastic; fresh noise every step).
    #[serde(rename = "sde-dpmsolver++")]
    SdeDpmSolverPlusPlus,
    /// DPM-Solver: the ODE in the noise prediction eps (Lu et al. 2022a); diffusers deprecates it.
    #[serde(rename = "dpmsolver")]
    DpmSolver,
    /// The SDE variant of DPM-Solver.
    #[serde(rename = "sde-dpmsolver")]
    SdeDpmSolver,
}

impl AlgorithmType {
    /// Whether the solver integrates the data prediction (the ++ variants).
    pub fn is_data_prediction(self) -> bool {
        matches!(
            self,
            AlgorithmType::DpmSolverPlusPlus | AlgorithmType::SdeDpmSolverPlusPlus
        )
    }

    pub fn is_sde(self) -> bool {
        matches!(
            self,
            AlgorithmType::SdeDpmSolverPlusPlus | AlgorithmType::SdeDpmSolver
        )
    }
}

/// The form of the second-order update (diffusers' `solver_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SolverType {
    /// diffusers maps UniPC/DEIS solver names (`logrho`, `bh1`, `bh2`) here.
    #[default]
    #[serde(alias = "logrho", alias = "bh1", alias = "bh2")]
    Midpoint,
    Heun,
}

/// The sigma the last step lands on (diffusers' `final_sigmas_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalSigmasType {
    /// Sigma 0: the last step returns the data prediction (++ solvers only).
    #[default]
    Zero,
    /// The smallest training sigma, at t = 0.
    SigmaMin,
}

/// `DPMSolverMultistepScheduler`'s configuration: keys and defaults as diffusers'.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DpmSolverConfig {
    #[serde(flatten)]
    pub schedule: BetaScheduleConfig,
    /// 1, 2 or 3: how many past model outputs each step uses.
    pub solver_order: usize,
    pub prediction_type: PredictionType,
    pub thresholding: bool,
    pub dynamic_thresholding_ratio: f64,
    pub sample_max_value: f64,
    pub algorithm_type: AlgorithmType,
    pub solver_type: SolverType,
    /// Fall back to lower orders for the last steps when there are fewer than 15.
    pub lower_order_final: bool,
    /// First order for the very last step, whatever the step count.
    pub euler_at_final: bool,
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    /// Sigmas evenly spaced in lambda (log sigma), Lu et al. 2022a's uniform-lambda spacing.
    pub use_lu_lambdas: bool,
    /// Not supported (needs the beta distribution's quantile); rejected when set.
    pub use_beta_sigmas: bool,
    /// Not supported (flow-matching models); rejected when set.
    pub use_flow_sigmas: bool,
    pub final_sigmas_type: FinalSigmasType,
    /// Timesteps whose lambda is below this are never visited (for the cosine schedule, whose last
    /// timesteps have near-infinite sigma). -inf (JSON null) keeps every timestep.
    #[serde(
        deserialize_with = "crate::json_float::null_is_neg_infinity",
        serialize_with = "crate::json_float::write_finite"
    )]
    pub lambda_min_clipped: f64,
    /// With `learned`/`learned_range` the model outputs 2C channels and only the first C are used;
    /// other values (DDPM's fixed types) are ignored, as diffusers does.
    pub variance_type: Option<VarianceType>,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: usize,
}

impl Default for DpmSolverConfig {
    fn default() -> Self {
        DpmSolverConfig {
            schedule: BetaScheduleConfig::default(),
            solver_order: 2,
            prediction_type: PredictionType::Epsilon,
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            sample_max_value: 1.0,
            algorithm_type: AlgorithmType::DpmSolverPlusPlus,
            solver_type: SolverType::Midpoint,
            lower_order_final: true,
            euler_at_final: false,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_lu_lambdas: false,
            use_beta_sigmas: false,
            use_flow_sigmas: false,
            final_sigmas_type: FinalSigmasType::Zero,
            lambda_min_clipped: f64::NEG_INFINITY,
            variance_type: None,
            timestep_spacing: TimestepSpacing::Linspace,
            steps_offset: 0,
        }
    }
}

/// alpha_t, sigma_t and lambda_t of a VE sigma (diffusers' `_sigma_to_alpha_sigma_t`, VP case).
#[derive(Clone, Copy, Debug)]
struct Level {
    alpha: f64,
    sigma: f64,
    lambda: f64,
}

impl Level {
    fn new(ve_sigma: f64) -> Self {
        let alpha = 1.0 / (ve_sigma * ve_sigma + 1.0).sqrt();
        let sigma = ve_sigma * alpha;
        // sigma 0 (the final step) gives lambda = +inf, h = +inf and exp(-h) = 0: the update returns x0.
        Level {
            alpha,
            sigma,
            lambda: alpha.ln() - sigma.ln(),
        }
    }
}

/// numpy's `linspace`: start + i * step, the last value exactly `stop`.
fn np_linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (stop - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| i as f64 * step + start).collect();
    if let Some(last) = v.last_mut() {
        *last = stop;
    }
    v
}

/// DPM-Solver multistep sampler.
pub struct DpmSolverSampler {
    config: DpmSolverConfig,
    schedule: NoiseSchedule,
    /// VE sigma of each training timestep (alpha_bar of the last clamped to 2^-24 under
    /// zero-terminal-SNR rescaling, as diffusers does, so that it stays finite).
    train_sigmas: Vec<f64>,
    /// Their logarithms, for `sigma_to_t`.
    log_train_sigmas: Vec<f64>,
    timesteps: Vec<f64>,
    /// The sigma of each timestep, then the final sigma: one more than `timesteps`.
    sigmas: Vec<f64>,
    /// The converted model outputs (x0, or eps for the non-++ solvers) of the latest steps, oldest first.
    model_outputs: VecDeque<Tensor>,
    /// How many steps have run since the start, capped at the order (diffusers' `lower_order_nums`).
    lower_order_nums: usize,
    /// The index the next step is expected at.
    step_index: usize,
}

impl DpmSolverSampler {
    pub fn new(config: DpmSolverConfig) -> Result<Self> {
        if !(1..=3).contains(&config.solver_order) {
            return Err(Error::InvalidArgument(format!(
                "solver_order must be 1, 2 or 3, got {}",
                config.solver_order
            )));
        }
        if config.solver_order == 3 && config.algorithm_type == AlgorithmType::SdeDpmSolver {
            // diffusers has no third-order sde-dpmsolver update (it fails at the third step).
            return Err(Error::InvalidArgument(
                "sde-dpmsolver has no third-order update: use solver_order 1 or 2".into(),
            ));
        }
        if config.use_beta_sigmas || config.use_flow_sigmas {
            return Err(Error::InvalidArgument(
                "use_beta_sigmas and use_flow_sigmas are not supported by diffuse's DPM-Solver"
                    .into(),
            ));
        }
        if config.use_karras_sigmas && config.use_exponential_sigmas {
            return Err(Error::InvalidArgument(
                "only one of use_karras_sigmas and use_exponential_sigmas can be set".into(),
            ));
        }
        if !config.algorithm_type.is_data_prediction()
            && config.final_sigmas_type == FinalSigmasType::Zero
        {
            return Err(Error::InvalidArgument(format!(
                "final_sigmas_type zero needs a ++ algorithm ({:?} divides by the final sigma); use sigma_min",
                config.algorithm_type
            )));
        }
        let schedule = NoiseSchedule::new(&config.schedule)?;
        let mut abar = schedule.alphas_cumprod().to_vec();
        if config.schedule.rescale_betas_zero_snr {
            if let Some(last) = abar.last_mut() {
                *last = super::sigmas::ZERO_SNR_TERMINAL_ALPHA_BAR;
            }
        }
        let train_sigmas: Vec<f64> = abar.iter().map(|a| ((1.0 - a) / a).sqrt()).collect();
        let log_train_sigmas = train_sigmas.iter().map(|s| s.ln()).collect();
        Ok(DpmSolverSampler {
            config,
            schedule,
            train_sigmas,
            log_train_sigmas,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            model_outputs: VecDeque::new(),
            lower_order_nums: 0,
            step_index: 0,
        })
    }

    pub fn config(&self) -> &DpmSolverConfig {
        &self.config
    }

    pub fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    /// The VE sigma of each timestep followed by the final sigma (empty before `set_timesteps`).
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// The real timestep of a VE sigma, interpolating log-sigma linearly between training timesteps
    /// (diffusers' `_sigma_to_t`).
    fn sigma_to_t(&self, sigma: f64) -> f64 {
        let log_sigma = sigma.max(1e-10).ln();
        let logs = &self.log_train_sigmas;
        let n = logs.len();
        if n == 1 {
            return 0.0;
        }
        let low = logs
            .iter()
            .rposition(|&l| l <= log_sigma)
            .unwrap_or(0)
            .min(n - 2);
        let w = ((logs[low] - log_sigma) / (logs[low] - logs[low + 1])).clamp(0.0, 1.0);
        (1.0 - w) * low as f64 + w * (low + 1) as f64
    }

    /// Integer timesteps of the spacing (DPM-Solver's own rules: n + 1 points, the last dropped),
    /// below the lambda clip.
    fn spaced_timesteps(&self, n: usize) -> Vec<f64> {
        let num_train = self.train_sigmas.len();
        // Timesteps with lambda below the clip are skipped; lambda falls with t, so they are the last.
        let clipped = self
            .train_sigmas
            .iter()
            .filter(|&&s| Level::new(s).lambda < self.config.lambda_min_clipped)
            .count();
        let last = (num_train - clipped) as f64;
        match self.config.timestep_spacing {
            TimestepSpacing::Linspace => np_linspace(0.0, last - 1.0, n + 1)
                .into_iter()
                .skip(1)
                .rev()
                .map(f64::round_ties_even)
                .collect(),
            TimestepSpacing::Leading => {
                let ratio = ((num_train - clipped) / (n + 1)) as f64;
                (1..=n)
                    .rev()
                    .map(|k| k as f64 * ratio + self.config.steps_offset as f64)
                    .collect()
            }
            TimestepSpacing::Trailing => {
                let ratio = num_train as f64 / n as f64;
                // numpy arange(last, 0, -ratio): ceil(last / ratio) values last + k * delta, with
                // numpy's delta = (last - ratio) - last.
                let count = (last / ratio).ceil() as usize;
                let delta = (last - ratio) - last;
                (0..count)
                    .map(|k| (last + k as f64 * delta).round_ties_even() - 1.0)
                    .collect()
            }
        }
    }

    /// The converted model output the solver integrates: x0 for the ++ solvers, eps otherwise
    /// (diffusers' `convert_model_output`), and x0 for the step's output.
    fn convert(&self, output: &Tensor, x: &Tensor, at: Level) -> (Tensor, Tensor) {
        let (a, s) = (super::scalar(at.alpha, x), super::scalar(at.sigma, x));
        let p = self.config.prediction_type;
        let threshold = |x0: Tensor| {
            if self.config.thresholding {
                dynamic_threshold(
                    &x0,
                    self.config.dynamic_thresholding_ratio,
                    self.config.sample_max_value,
                )
            } else {
                x0
            }
        };
        if self.config.algorithm_type.is_data_prediction() {
            let x0 = threshold(p.to_x0(output, x, &a, &s));
            (x0.shallow_clone(), x0)
        } else {
            let eps = p.to_eps(output, x, &a, &s);
            let x0 = (x - &eps * at.sigma) / at.alpha;
            if self.config.thresholding {
                let x0 = threshold(x0);
                // Re-derive eps from the thresholded x0 at the same x_t.
                let eps = (x - &x0 * at.alpha) / at.sigma;
                (eps, x0)
            } else {
                (eps, x0)
            }
        }
    }

    /// The position of `t`: the expected next index, else its first occurrence in the list (a jump,
    /// which starts a fresh history, as starting mid-schedule for img2img does). Rounding can repeat
    /// a timestep (Karras sigmas on the cosine schedule); diffusers then starts at the second copy and
    /// runs off the end of its sigmas, where this follows the list.
    fn resolve_index(&mut self, t: f64) -> Result<usize> {
        if self.timesteps.get(self.step_index) == Some(&t) {
            return Ok(self.step_index);
        }
        let index = index_of(&self.timesteps, t)?;
        self.model_outputs.clear();
        self.lower_order_nums = 0;
        Ok(index)
    }

    /// First-order update from `s` to `t` with D0 = the latest converted output.
    fn first_order(
        &self,
        x: &Tensor,
        d0: &Tensor,
        s: Level,
        t: Level,
        noise: Option<&Tensor>,
    ) -> Tensor {
        let h = t.lambda - s.lambda;
        match self.config.algorithm_type {
            // DPM-Solver++ first order, x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) x0: DDIM.
            AlgorithmType::DpmSolverPlusPlus => {
                x * (t.sigma / s.sigma) - d0 * (t.alpha * (-h).exp_m1())
            }
            // DPM-Solver-1: eq. 3.4 of Lu et al. 2022a with eps held constant; also DDIM.
            AlgorithmType::DpmSolver => x * (t.alpha / s.alpha) - d0 * (t.sigma * h.exp_m1()),
            // The ++ SDE first order is the DDPM posterior q(x_t | x_s, x0) (DDIM with eta = 1).
            AlgorithmType::SdeDpmSolverPlusPlus => {
                let noise = noise.expect("SDE steps draw noise");
                x * (t.sigma / s.sigma * (-h).exp()) - d0 * (t.alpha * (-2.0 * h).exp_m1())
                    + noise * (t.sigma * (-(-2.0 * h).exp_m1()).sqrt())
            }
            AlgorithmType::SdeDpmSolver => {
                let noise = noise.expect("SDE steps draw noise");
                x * (t.alpha / s.alpha) - d0 * (2.0 * t.sigma * h.exp_m1())
                    + noise * (t.sigma * (2.0 * h).exp_m1().sqrt())
            }
        }
    }

    /// Second-order multistep update from `s0` to `t`, using the outputs at `s0` and `s1`.
    fn second_order(
        &self,
        x: &Tensor,
        t: Level,
        s0: Level,
        s1: Level,
        noise: Option<&Tensor>,
    ) -> Tensor {
        let n = self.model_outputs.len();
        let (m0, m1) = (&self.model_outputs[n - 1], &self.model_outputs[n - 2]);
        let (h, h0) = (t.lambda - s0.lambda, s0.lambda - s1.lambda);
        let r0 = h0 / h;
        // D1 = (m0 - m1) / r0 estimates h times the derivative of the output in lambda at s0.
        let d1 = (m0 - m1) * (1.0 / r0);
        let heun = self.config.solver_type == SolverType::Heun;
        let phi_1 = (-h).exp_m1(); // e^{-h} - 1
        match self.config.algorithm_type {
            // DPM-Solver++(2M) (Lu et al. 2022b, algorithm 2); the Heun form weights D1 by
            // alpha_t ((e^-h - 1) / h + 1) instead of -alpha_t (e^-h - 1) / 2.
            AlgorithmType::DpmSolverPlusPlus => {
                let c1 = if heun {
                    t.alpha * (phi_1 / h + 1.0)
                } else {
                    -0.5 * t.alpha * phi_1
                };
                x * (t.sigma / s0.sigma) - m0 * (t.alpha * phi_1) + d1 * c1
            }
            // Multistep second order in eps: eq. 3.4 of Lu et al. 2022a with eps linear in lambda.
            AlgorithmType::DpmSolver => {
                let c1 = if heun {
                    -t.sigma * (h.exp_m1() / h - 1.0)
                } else {
                    -0.5 * t.sigma * h.exp_m1()
                };
                x * (t.alpha / s0.alpha) - m0 * (t.sigma * h.exp_m1()) + d1 * c1
            }
            AlgorithmType::SdeDpmSolverPlusPlus => {
                let noise = noise.expect("SDE steps draw noise");
                let one_minus = -(-2.0 * h).exp_m1(); // 1 - e^{-2h}
                let c1 = if heun {
                    t.alpha * (one_minus / (-2.0 * h) + 1.0)
                } else {
                    0.5 * t.alpha * one_minus
                };
                x * (t.sigma / s0.sigma * (-h).exp())
                    + m0 * (t.alpha * one_minus)
                    + d1 * c1
                    + noise * (t.sigma * one_minus.sqrt())
            }
            AlgorithmType::SdeDpmSolver => {
                let noise = noise.expect("SDE steps draw noise");
                let c1 = if heun {
                    -2.0 * t.sigma * (h.exp_m1() / h - 1.0)
                } else {
                    -t.sigma * h.exp_m1()
                };
                x * (t.alpha / s0.alpha) - m0 * (2.0 * t.sigma * h.exp_m1())
                    + d1 * c1
                    + noise * (t.sigma * (2.0 * h).exp_m1().sqrt())
            }
        }
    }

    /// Third-order multistep update from `s0` to `t`, using the outputs at `s0`, `s1` and `s2`.
    fn third_order(&self, x: &Tensor, t: Level, s: [Level; 3], noise: Option<&Tensor>) -> Tensor {
        let n = self.model_outputs.len();
        let (m0, m1, m2) = (
            &self.model_outputs[n - 1],
            &self.model_outputs[n - 2],
            &self.model_outputs[n - 3],
        );
        let [s0, s1, s2] = s;
        let (h, h0, h1) = (
            t.lambda - s0.lambda,
            s0.lambda - s1.lambda,
            s1.lambda - s2.lambda,
        );
        let (r0, r1) = (h0 / h, h1 / h);
        // Divided differences: D1 ~ h x', D2 ~ h^2 x'' / 2 at s0.
        let d1_0 = (m0 - m1) * (1.0 / r0);
        let d1_1 = (m1 - m2) * (1.0 / r1);
        let d1 = &d1_0 + (&d1_0 - &d1_1) * (r0 / (r0 + r1));
        let d2 = (&d1_0 - &d1_1) * (1.0 / (r0 + r1));
        let phi_1 = (-h).exp_m1();
        match self.config.algorithm_type {
            // DPM-Solver++(3M), the third-order multistep update of Lu et al.'s reference code.
            AlgorithmType::DpmSolverPlusPlus => {
                x * (t.sigma / s0.sigma) - m0 * (t.alpha * phi_1)
                    + d1 * (t.alpha * (phi_1 / h + 1.0))
                    - d2 * (t.alpha * ((phi_1 + h) / (h * h) - 0.5))
            }
            // Multistep third order in eps: eq. 3.4 of Lu et al. 2022a with eps quadratic in lambda.
            AlgorithmType::DpmSolver => {
                let e = h.exp_m1();
                x * (t.alpha / s0.alpha)
                    - m0 * (t.sigma * e)
                    - d1 * (t.sigma * (e / h - 1.0))
                    - d2 * (t.sigma * ((e - h) / (h * h) - 0.5))
            }
            AlgorithmType::SdeDpmSolverPlusPlus => {
                let noise = noise.expect("SDE steps draw noise");
                let one_minus = -(-2.0 * h).exp_m1();
                x * (t.sigma / s0.sigma * (-h).exp())
                    + m0 * (t.alpha * one_minus)
                    + d1 * (t.alpha * (one_minus / (-2.0 * h) + 1.0))
                    + d2 * (t.alpha * ((one_minus - 2.0 * h) / (4.0 * h * h) - 0.5))
                    + noise * (t.sigma * one_minus.sqrt())
            }
            AlgorithmType::SdeDpmSolver => unreachable!("rejected by DpmSolverSampler::new"),
        }
    }
}

impl Sampler for DpmSolverSampler {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let num_train = self.train_sigmas.len();
        if n == 0 {
            return Err(Error::InvalidArgument(
                "the number of inference steps must be at least 1".into(),
            ));
        }
        if n > num_train {
            return Err(Error::InvalidArgument(format!(
                "{n} inference steps is more than the {num_train} timesteps the model was trained with"
            )));
        }
        let (sigma_min, sigma_max) = (self.train_sigmas[0], self.train_sigmas[num_train - 1]);
        let round = self.config.schedule.beta_schedule != BetaSchedule::SquaredcosCapV2;
        // diffusers stores timesteps as int64: fractional ones are truncated (after rounding, except
        // under the cosine schedule). A t within 1e-9 of an integer is taken as that integer: sigma_max
        // comes back from the spacing formulas an ulp off, and diffusers' truncation then turns
        // timestep 999 into 998 or not by chance of rounding.
        let to_timesteps = |sigmas: &[f64], round: bool| -> Vec<f64> {
            sigmas
                .iter()
                .map(|&s| {
                    let t = self.sigma_to_t(s);
                    if round {
                        t.round_ties_even()
                    } else if (t - t.round()).abs() < 1e-9 {
                        t.round()
                    } else {
                        t.trunc()
                    }
                })
                .collect()
        };
        let (timesteps, mut sigmas) = if self.config.use_karras_sigmas {
            let sigmas = karras_sigmas(sigma_min, sigma_max, n, 7.0);
            (to_timesteps(&sigmas, round), sigmas)
        } else if self.config.use_lu_lambdas {
            let sigmas: Vec<f64> = np_linspace(sigma_max.ln(), sigma_min.ln(), n)
                .into_iter()
                .map(f64::exp)
                .collect();
            (to_timesteps(&sigmas, round), sigmas)
        } else if self.config.use_exponential_sigmas {
            let sigmas = exponential_sigmas(sigma_min, sigma_max, n);
            (to_timesteps(&sigmas, false), sigmas)
        } else {
            let timesteps = self.spaced_timesteps(n);
            let sigmas = timesteps
                .iter()
                .map(|&t| self.train_sigmas[(t.max(0.0) as usize).min(num_train - 1)])
                .collect();
            (timesteps, sigmas)
        };
        sigmas.push(match self.config.final_sigmas_type {
            FinalSigmasType::Zero => 0.0,
            FinalSigmasType::SigmaMin => sigma_min,
        });
        self.timesteps = timesteps;
        self.sigmas = sigmas;
        self.model_outputs.clear();
        self.lower_order_nums = 0;
        self.step_index = 0;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn level(&self, done: usize) -> Option<(f64, f64)> {
        // sigmas[done] is the noise level after `done` steps, the final sigma after all of them.
        self.sigmas.get(done).map(|&s| {
            let level = Level::new(s);
            (level.alpha, level.sigma)
        })
    }

    fn start_at(&mut self, index: usize) -> Result<()> {
        if index > self.timesteps.len() {
            return Err(Error::InvalidArgument(format!(
                "start step {index} is past the {} steps",
                self.timesteps.len()
            )));
        }
        // The multistep history belongs to the steps taken so far: a (re)start is first order.
        self.model_outputs.clear();
        self.lower_order_nums = 0;
        self.step_index = index;
        Ok(())
    }

    fn step(&mut self, model_output: &Tensor, t: f64, sample: &Tensor) -> Result<StepOutput> {
        if self.timesteps.is_empty() {
            return Err(Error::InvalidArgument(
                "set_timesteps must be called before step".into(),
            ));
        }
        let index = self.resolve_index(t)?;
        let n = self.timesteps.len();
        // Only the mean channels matter here; the variance channels are checked and dropped.
        let output = match self.config.variance_type {
            Some(v) => v.split_output(model_output, sample.size()[1])?.0,
            None => model_output.shallow_clone(),
        };
        let out_kind = output.kind();
        // Upcast as diffusers does (f64 samples stay f64).
        let work = if sample.kind() == Kind::Double {
            Kind::Double
        } else {
            Kind::Float
        };
        let x = sample.to_kind(work);
        let output = output.to_kind(work);

        let order = self.config.solver_order;
        let few_steps = self.config.lower_order_final && n < 15;
        // Lower orders at the end stabilise few-step sampling; a zero final sigma is always first order.
        let lower_order_final = index == n - 1
            && (self.config.euler_at_final
                || few_steps
                || self.config.final_sigmas_type == FinalSigmasType::Zero);
        let lower_order_second = index + 2 == n && few_steps;

        let now = Level::new(self.sigmas[index]);
        let next = Level::new(self.sigmas[index + 1]);
        let (converted, x0) = self.convert(&output, &x, now);
        self.model_outputs.push_back(converted);
        while self.model_outputs.len() > order {
            self.model_outputs.pop_front();
        }
        // diffusers draws the noise here, after converting the output, on every SDE step.
        let noise = self
            .config
            .algorithm_type
            .is_sde()
            .then(|| Tensor::randn_like(&x.to_kind(Kind::Float)).to_kind(work));
        let noise = noise.as_ref();

        let prev = if order == 1 || self.lower_order_nums < 1 || lower_order_final {
            let d0 = self.model_outputs.back().expect("just pushed");
            self.first_order(&x, d0, now, next, noise)
        } else if order == 2 || self.lower_order_nums < 2 || lower_order_second {
            let s1 = Level::new(self.sigmas[index - 1]);
            self.second_order(&x, next, now, s1, noise)
        } else {
            let s1 = Level::new(self.sigmas[index - 1]);
            let s2 = Level::new(self.sigmas[index - 2]);
            self.third_order(&x, next, [now, s1, s2], noise)
        };
        self.lower_order_nums = (self.lower_order_nums + 1).min(order);
        self.step_index = index + 1;
        Ok(StepOutput {
            prev_sample: prev.to_kind(out_kind),
            pred_original_sample: x0.to_kind(out_kind),
        })
    }
}
