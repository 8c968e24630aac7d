//! EDM (Karras et al. 2022): the preconditioning against hand-computed values, the loss and the
//! sampler against the exact denoiser of Gaussian data (closed forms, no training), the bridge to
//! the discrete samplers, and a small network that learns a 2-D mixture of Gaussians.
//!
//! The exact denoiser: for data N(0, v^2 I), E[x0 | x0 + sigma n = x] = x v^2 / (sigma^2 + v^2).
//! Its raw network F follows by inverting the preconditioning, F = (D - c_skip x) / c_out, with x
//! and sigma recovered from F's own inputs (sigma = exp(4 c_noise), x = x_in / c_in), so the tests
//! also check that D feeds F what the paper says. With v = sigma_data, D = c_skip x and F = 0.

use crate::rng_lock;
use diffuse_core::denoiser::Denoiser;
use diffuse_core::edm::{
    c_in, c_noise, c_out, c_skip, edm_loss, edm_sample, edm_sigmas, loss_weight, EdmAsEpsilon,
    EdmConfig, EdmDenoiser, EdmNetwork, Preconditioning, SigmaDenoiser, SigmaInterpolation,
};
use diffuse_core::samplers::ddim::{DdimConfig, DdimSampler};
use diffuse_core::samplers::euler::{EulerConfig, EulerSampler};
use diffuse_core::samplers::heun::{HeunConfig, HeunSampler};
use diffuse_core::samplers::{sample, Sampler};
use diffuse_core::schedule::NoiseSchedule;
use diffuse_core::tensor::manual_seed;
use std::cell::Cell;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

const F64: (Kind, Device) = (Kind::Double, Device::Cpu);
const F32: (Kind, Device) = (Kind::Float, Device::Cpu);

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).reshape([-1])).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double).double_value(&[])
}

/// The exact denoiser of N(0, v^2 I) data, through the preconditioning of `sigma_data`; counts its
/// evaluations.
fn exact(
    v: f64,
    sigma_data: f64,
    calls: &Cell<usize>,
) -> EdmDenoiser<impl Fn(&Tensor, &Tensor) -> Tensor + '_> {
    let f = move |x_in: &Tensor, c_noise: &Tensor| {
        calls.set(calls.get() + 1);
        let mut shape = vec![-1i64];
        shape.extend(std::iter::repeat_n(1, x_in.dim() - 1));
        let s = (c_noise * 4.0).exp().reshape(&shape);
        let x = x_in / c_in(&s, sigma_data);
        let d = &x * (v * v) / (s.square() + v * v);
        (d - &x * c_skip(&s, sigma_data)) / c_out(&s, sigma_data)
    };
    EdmDenoiser::new(f, sigma_data)
}

#[test]
fn preconditioning_matches_table_1() {
    let sd = 0.5;
    // (sigma, c_skip, c_out, c_in, c_noise, lambda), by hand with sigma_data = 0.5:
    // c_skip = 0.25 / (s^2 + 0.25), c_out = 0.5 s / sqrt(s^2 + 0.25), c_in = 1 / sqrt(s^2 + 0.25),
    // c_noise = ln(s) / 4, lambda = (s^2 + 0.25) / (0.25 s^2).
    let cases = [
        (
            0.1,
            0.25 / 0.26,
            0.05 / 0.26f64.sqrt(),
            1.0 / 0.26f64.sqrt(),
            0.1f64.ln() / 4.0,
            104.0,
        ),
        (
            0.5,
            0.5,
            0.25 / 0.5f64.sqrt(),
            2f64.sqrt(),
            0.5f64.ln() / 4.0,
            8.0,
        ),
        (
            1.0,
            0.2,
            0.5 / 1.25f64.sqrt(),
            1.0 / 1.25f64.sqrt(),
            0.0,
            5.0,
        ),
    ];
    let sigma = Tensor::from_slice(&cases.map(|c| c.0));
    let like = Tensor::zeros([3, 4, 5], F64);
    let p = Preconditioning::new(&sigma, sd, &like);
    assert_eq!(p.c_skip.size(), [3, 1, 1]);
    assert_eq!(p.weight.size(), [3, 1, 1]);
    assert_eq!(p.c_noise.size(), [3]);
    let close = |got: Vec<f64>, want: Vec<f64>, what: &str| {
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-12 * w.abs().max(1.0),
                "{what}: {g} vs {w}"
            );
        }
    };
    close(values(&p.c_skip), cases.map(|c| c.1).to_vec(), "c_skip");
    close(values(&p.c_out), cases.map(|c| c.2).to_vec(), "c_out");
    close(values(&p.c_in), cases.map(|c| c.3).to_vec(), "c_in");
    close(values(&p.c_noise), cases.map(|c| c.4).to_vec(), "c_noise");
    close(values(&p.weight), cases.map(|c| c.5).to_vec(), "lambda");

    // Identities over a wide range of sigma: lambda c_out^2 = 1 (the paper's effective weight),
    // c_skip + (c_out / sigma_data)^2 = 1, and c_in^2 (sigma^2 + sigma_data^2) = 1 (unit-variance input).
    let s = Tensor::from_slice(&[0.002, 0.05, 0.5, 3.0, 80.0]);
    let ones = |t: Tensor, what: &str| {
        for v in values(&t) {
            assert!((v - 1.0).abs() < 1e-12, "{what}: {v}");
        }
    };
    ones(
        loss_weight(&s, sd) * c_out(&s, sd).square(),
        "lambda c_out^2",
    );
    ones(
        c_skip(&s, sd) + (c_out(&s, sd) / sd).square(),
        "c_skip + c_out^2/sd^2",
    );
    ones(
        c_in(&s, sd).square() * (s.square() + sd * sd),
        "c_in^2 (s^2 + sd^2)",
    );
    assert_eq!(values(&c_noise(&Tensor::from_slice(&[1.0]))), [0.0]);
}

/// E[lambda(sigma) (D - x0)^2] for the exact denoiser of N(0, v^2) data under preconditioning
/// sigma_data, and the variance of one example's mean over `elements` values, by quadrature over
/// ln sigma ~ N(p_mean, p_std^2). Given sigma, (D - x0) ~ N(0, s^2 v^2 / (s^2 + v^2)), so the weighted
/// error is g(sigma) chi^2_1 with g = lambda s^2 v^2 / (s^2 + v^2) = (v / sd)^2 (s^2 + sd^2) / (s^2 + v^2).
fn expected_loss(v: f64, config: &EdmConfig, elements: f64) -> (f64, f64) {
    let sd = config.sigma_data;
    let g = |z: f64| {
        let s2 = (config.p_mean + config.p_std * z).exp().powi(2);
        (v / sd).powi(2) * (s2 + sd * sd) / (s2 + v * v)
    };
    let (n, lo, hi) = (20_000, -10.0, 10.0);
    let h = (hi - lo) / n as f64;
    let (mut m1, mut m2) = (0.0, 0.0);
    for i in 0..=n {
        let z: f64 = lo + h * i as f64;
        let w = if i == 0 || i == n { 0.5 } else { 1.0 } * h * (-z * z / 2.0).exp()
            / (2.0 * std::f64::consts::PI).sqrt();
        m1 += w * g(z);
        m2 += w * g(z).powi(2);
    }
    // Per example: g(sigma) times the mean of `elements` chi^2_1 values (mean 1, variance 2 / E).
    (m1, m2 * (1.0 + 2.0 / elements) - m1 * m1)
}

#[test]
fn loss_of_the_exact_denoiser_matches_its_closed_form() {
    let _g = rng_lock();
    manual_seed(11);
    let config = EdmConfig::default();
    let calls = Cell::new(0);
    let (batch, elements) = (16_384, 8);
    // v = sigma_data: lambda c_out^2 = 1 and the ideal F (= 0) leaves an error of unit variance, so
    // the loss is a mean of chi^2_1 values: expectation exactly 1, standard error sqrt(2 / (B E)).
    // v = 1 (sigma_data still 0.5): F != 0 and the expectation depends on the sigma distribution.
    for v in [0.5, 1.0] {
        let (mean, var) = expected_loss(v, &config, elements as f64);
        let se = (var / batch as f64).sqrt();
        let x0 = Tensor::randn([batch, elements], F32) * v;
        let loss = scalar(&edm_loss(&exact(v, 0.5, &calls), &x0, &config).unwrap());
        println!("v {v}: loss {loss:.5}, expected {mean:.5} +- {se:.5}");
        if v == 0.5 {
            assert!((mean - 1.0).abs() < 1e-9);
        }
        // Five standard errors (se = 0.0039 for v = 0.5, 0.011 for v = 1).
        assert!(
            (loss - mean).abs() < 5.0 * se,
            "v {v}: loss {loss}, expected {mean} +- {se}"
        );
    }
    assert_eq!(calls.get(), 2);
}

/// Sample 16384 values with the exact denoiser of N(0, v^2) data in `steps` steps; returns
/// (initial noise, samples, evaluations).
fn edm_run(v: f64, config: &EdmConfig, steps: usize, seed: u64) -> (Tensor, Tensor, usize) {
    manual_seed(seed);
    let calls = Cell::new(0);
    let sigmas = edm_sigmas(steps, config).unwrap();
    let x = Tensor::randn([2048, 8], F32) * sigmas[0];
    let mut seen = 0;
    let out = edm_sample(
        &exact(v, config.sigma_data, &calls),
        x.copy(),
        &sigmas,
        config,
        |info| {
            assert_eq!(
                (info.index, info.total, info.t),
                (seen, steps, sigmas[seen])
            );
            seen += 1;
        },
    )
    .unwrap();
    assert_eq!(seen, steps);
    (x, out, calls.get())
}

fn std_of(t: &Tensor) -> f64 {
    let values = values(t);
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    (values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt()
}

/// Algorithm 2 on N(0, v^2) data, where D(x; s) = x v^2 / (s^2 + v^2) is linear: a scalar
/// recursion (independent of the library) for the ratio of the output's std to sigma_max's, i.e.
/// the std the sampler gives for unit-variance latents * sigma_max, relative to v. Deterministic
/// (s_churn = 0): the output is exactly latents * sigma_max * (this factor) * v / sigma_max.
fn algorithm_2_std_factor(v: f64, config: &EdmConfig, steps: usize) -> f64 {
    let (smin, smax, rho) = (config.sigma_min, config.sigma_max, config.rho);
    let mut s: Vec<f64> = (0..steps)
        .map(|i| {
            let r = if steps == 1 {
                0.0
            } else {
                i as f64 / (steps - 1) as f64
            };
            (smax.powf(1.0 / rho) + r * (smin.powf(1.0 / rho) - smax.powf(1.0 / rho))).powf(rho)
        })
        .collect();
    s.push(0.0);
    let keep = |t: f64| 1.0 - v * v / (t * t + v * v); // (x - D(x; t)) / x
    let mut var = smax * smax;
    for i in 0..steps {
        let (t, tn) = (s[i], s[i + 1]);
        let gamma = if config.s_tmin <= t && t <= config.s_tmax {
            (config.s_churn / steps as f64).min(2f64.sqrt() - 1.0)
        } else {
            0.0
        };
        let th = t * (1.0 + gamma);
        var += (th * th - t * t) * config.s_noise.powi(2);
        let d = keep(th) / th;
        let mut k = 1.0 + (tn - th) * d;
        if tn != 0.0 {
            k = 1.0 + (tn - th) * (d + k * keep(tn) / tn) / 2.0;
        }
        var *= k * k;
    }
    var.sqrt() / v
}

/// The deterministic sampler is exactly Algorithm 2 (to f32 rounding): for Gaussian data its map
/// is linear, out = x_T * factor, with the factor from the independent recursion above. That map
/// has a real discretisation error at the paper's 18 steps on this data: 5.5% too wide for v = 0.5
/// (4.5% for v = 1), the Heun steps being coarse (ratio ~1.9) where D bends, at sigma ~ v. With
/// more steps the samples' std converges to v (1.6% at 32 steps, 0.4% at 64).
#[test]
fn edm_sampler_is_algorithm_2_and_reproduces_gaussian_data() {
    let _g = rng_lock();
    let config = EdmConfig::default();
    for v in [0.5, 1.0] {
        let factor = algorithm_2_std_factor(v, &config, 18);
        let (x, out, calls) = edm_run(v, &config, 18, 1);
        assert_eq!(calls, 35, "18 Heun steps, the last one Euler");
        let want = &x * (factor * v / config.sigma_max);
        let err = scalar(&(&out - &want).abs().max()) / scalar(&want.abs().max());
        let std18 = std_of(&out);
        println!(
            "v {v}: 18 steps: std {std18:.4} (Algorithm 2 factor {factor:.4}, map error {err:.1e})"
        );
        assert!(err < 1e-5, "relative error {err} against Algorithm 2");
        for steps in [32, 64] {
            let (_, out, calls) = edm_run(v, &config, steps, 1);
            assert_eq!(calls, 2 * steps - 1);
            let std = std_of(&out);
            let f = algorithm_2_std_factor(v, &config, steps);
            println!("v {v}: {steps} steps: std {std:.4} (factor {f:.4})");
            // 16384 values: the std's standard error is ~0.55%.
            assert!(
                (std / v - 1.0).abs() < 0.05,
                "{steps} steps: std {std} vs {v}"
            );
        }
    }
}

/// With S_churn = 40 in [0.05, 50] the samples' std matches Algorithm 2's (from the variance
/// recursion: 12.5% wide at 18 steps for v = 0.5, 2.1% at 64, 0.75% at 128) within 2.5%
/// (16384 values: 0.55% standard error), and reaches v within 5% at 128 steps.
#[test]
fn stochastic_edm_sampler_reproduces_gaussian_data() {
    let _g = rng_lock();
    let config = EdmConfig {
        s_churn: 40.0,
        s_tmin: 0.05,
        s_tmax: 50.0,
        ..EdmConfig::default()
    };
    for v in [0.5, 1.0] {
        for steps in [18, 128] {
            let (_, out, calls) = edm_run(v, &config, steps, 2);
            assert_eq!(calls, 2 * steps - 1);
            let std = std_of(&out);
            let factor = algorithm_2_std_factor(v, &config, steps);
            println!("churn 40, v {v}, {steps} steps: std {std:.4} (Algorithm 2: {factor:.4} v)");
            assert!(
                (std / (factor * v) - 1.0).abs() < 0.025,
                "std {std} vs {factor} * {v}"
            );
            if steps == 128 {
                assert!((std / v - 1.0).abs() < 0.05, "std {std} vs {v}");
            }
        }
    }
    // Churn draws noise: the same seed gives the same samples, another seed others.
    let run = |seed| edm_run(0.5, &config, 18, seed).1;
    assert!(run(3).equal(&run(3)));
    assert!(!run(3).equal(&run(4)));
}

/// The bridge's convention, checked where the samplers use it: with the model input
/// x / sqrt(sigma^2 + 1) (sigma-space samplers) or x_t = alpha x0 + sigma_vp eps (VP samplers) and
/// the sampler's timestep t (as the f32 the sampling loop passes), the sampler's x_0 estimate
/// (x - sigma eps, resp. (x_t - sigma_vp eps) / alpha) is exactly D(x; sigma).
#[test]
fn bridge_returns_the_denoisers_estimate() {
    let _g = rng_lock();
    manual_seed(5);
    let calls = Cell::new(0);
    let d = exact(1.0, 0.5, &calls);
    let x_ve = Tensor::randn([4, 3], F64);
    let check = |bridge: &EdmAsEpsilon<_>, t: f64, sigma: f64, vp: bool, what: &str| -> f64 {
        let tt = Tensor::full([4], t, F32);
        let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
        let input = &x_ve * alpha;
        let eps = bridge.forward(&input, &tt);
        let x0 = if vp {
            (&input - &eps * (sigma * alpha)) / alpha
        } else {
            &x_ve - &eps * sigma
        };
        let want = d.denoise(&x_ve, &Tensor::full([4], sigma, F64));
        let err = scalar(&(x0 - &want).abs().max()) / scalar(&want.abs().max());
        assert!(
            err < 1e-5,
            "{what}: t {t}, sigma {sigma}: relative error {err}"
        );
        err
    };
    let schedule = NoiseSchedule::new(&Default::default()).unwrap();
    let mut worst = [0.0f64; 4];
    // Euler, default (linspace, fractional t, sigma = sigma_at(t)): Linear.
    for (karras, k) in [(false, 0), (true, 1)] {
        let mut s = EulerSampler::new(EulerConfig {
            use_karras_sigmas: karras,
            ..Default::default()
        })
        .unwrap();
        s.set_timesteps(25).unwrap();
        let bridge = EdmAsEpsilon::new(
            exact(1.0, 0.5, &calls),
            schedule.clone(),
            SigmaInterpolation::for_sampler(karras, false),
        );
        for (&t, &sigma) in s.timesteps().iter().zip(s.sigmas()) {
            worst[k] = worst[k].max(check(&bridge, t, sigma, false, "euler"));
        }
    }
    // DDIM: integer timesteps, VP input; both interpolations agree there.
    let mut ddim = DdimSampler::new(DdimConfig::default()).unwrap();
    ddim.set_timesteps(25).unwrap();
    let sigmas = schedule.sigmas();
    for (k, interp) in [
        (2, SigmaInterpolation::Linear),
        (3, SigmaInterpolation::LogLinear),
    ] {
        let bridge = EdmAsEpsilon::new(exact(1.0, 0.5, &calls), schedule.clone(), interp);
        for &t in ddim.timesteps() {
            worst[k] = worst[k].max(check(&bridge, t, sigmas[t as usize], true, "ddim"));
        }
    }
    println!(
        "worst relative error: euler linspace {:.1e}, euler karras {:.1e}, ddim {:.1e} / {:.1e}",
        worst[0], worst[1], worst[2], worst[3]
    );
    // The wrong interpolation for Karras sigmas is measurably off (why the choice exists).
    let linear = EdmAsEpsilon::new(
        exact(1.0, 0.5, &calls),
        schedule.clone(),
        SigmaInterpolation::Linear,
    );
    let t = schedule.sigma_to_t(0.012);
    let off = linear.sigma_of(t) / 0.012 - 1.0;
    println!("linear interpolation at a Karras sigma 0.012: {off:.2e} relative");
    assert!(off.abs() > 1e-3);
}

/// Sample 16384 values of N(0, v^2) data with the bridge under a discrete sampler; returns the std.
fn bridged_run(sampler: &mut dyn Sampler, interp: SigmaInterpolation, v: f64, seed: u64) -> f64 {
    manual_seed(seed);
    let calls = Cell::new(0);
    let schedule = NoiseSchedule::new(&Default::default()).unwrap();
    let bridge = EdmAsEpsilon::new(exact(v, 0.5, &calls), schedule, interp);
    let x = Tensor::randn([2048, 8], F32) * sampler.init_noise_sigma();
    let out = sample(sampler, &bridge, x, |_| {}).unwrap();
    let mean = scalar(&out.mean(Kind::Double));
    assert!(mean.abs() < 4.0 * v / 128.0, "mean {mean}"); // 4 standard errors
    std_of(&out)
}

/// The exact EDM denoiser under Euler (Karras sigmas, and the default linspace sigmas), Heun
/// (Karras) and DDIM, all on the default linear schedule (sigma 0.01..157). These samplers'
/// discretisation errors on Gaussian data are first order for Euler and DDIM (for v = 0.5, at 18 /
/// 50 / 200 steps: std 16% / 5% / 1% narrow) and second order for Heun (7% / 1.4% / 0.7% wide), so the
/// std is checked at 200 steps (50 for Heun): within 5% of v (16384 values: 0.55% standard error).
#[test]
fn bridge_runs_under_the_discrete_samplers() {
    let _g = rng_lock();
    let (log, linear) = (SigmaInterpolation::LogLinear, SigmaInterpolation::Linear);
    for v in [0.5, 1.0] {
        let euler = |karras| {
            let mut s = EulerSampler::new(EulerConfig {
                use_karras_sigmas: karras,
                ..Default::default()
            })
            .unwrap();
            s.set_timesteps(200).unwrap();
            s
        };
        let s_ek = bridged_run(&mut euler(true), log, v, 7);
        let s_el = bridged_run(&mut euler(false), linear, v, 7);
        // Heun's schedule must be the bridge's: its default betas are 0.00085..0.012.
        let mut heun = HeunSampler::new(HeunConfig {
            use_karras_sigmas: true,
            beta_start: 0.0001,
            beta_end: 0.02,
            ..Default::default()
        })
        .unwrap();
        heun.set_timesteps(50).unwrap();
        let s_h = bridged_run(&mut heun, log, v, 8);
        let mut ddim = DdimSampler::new(DdimConfig {
            clip_sample: false,
            ..Default::default()
        })
        .unwrap();
        ddim.set_timesteps(200).unwrap();
        let s_d = bridged_run(&mut ddim, linear, v, 9);
        println!(
            "v {v}: std: euler karras {s_ek:.4}, euler linspace {s_el:.4}, heun karras {s_h:.4}, ddim {s_d:.4}"
        );
        for (name, s) in [
            ("euler karras", s_ek),
            ("euler linspace", s_el),
            ("heun karras", s_h),
            ("ddim", s_d),
        ] {
            assert!((s / v - 1.0).abs() < 0.05, "{name}: std {s} vs {v}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Learning: a tiny MLP on a 2-D mixture of four Gaussians.

struct Mlp {
    layers: nn::Sequential,
}

impl Mlp {
    fn new(p: &nn::Path) -> Self {
        let c = Default::default();
        let layers = nn::seq()
            .add(nn::linear(p / "l1", 2 + 7, 64, c))
            .add_fn(|x| x.silu())
            .add(nn::linear(p / "l2", 64, 64, c))
            .add_fn(|x| x.silu())
            .add(nn::linear(p / "l3", 64, 2, c));
        Mlp { layers }
    }
}

impl EdmNetwork for Mlp {
    fn forward(&self, x_in: &Tensor, c_noise: &Tensor) -> Tensor {
        // c_noise and sin/cos features at three frequencies.
        let c = c_noise.reshape([-1, 1]);
        let mut features = vec![x_in.shallow_clone(), c.shallow_clone()];
        for k in [1.0, 2.0, 4.0] {
            features.push((&c * k).sin());
            features.push((&c * k).cos());
        }
        self.layers.forward(&Tensor::cat(&features, 1))
    }
}

#[test]
fn a_small_network_learns_a_mixture_of_four_gaussians() {
    let _g = rng_lock();
    manual_seed(2022);
    let centers =
        Tensor::from_slice(&[1.0f32, 1.0, 1.0, -1.0, -1.0, 1.0, -1.0, -1.0]).reshape([4, 2]);
    // The data's std per coordinate is sqrt(1 + 0.1^2) ~ 1: sigma_data = 1.
    let config = EdmConfig {
        sigma_data: 1.0,
        ..EdmConfig::default()
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let denoiser = EdmDenoiser::new(Mlp::new(&vs.root()), config.sigma_data);
    let mut opt = diffuse_core::tensor::optim::AdamW::new(
        &vs,
        diffuse_core::tensor::optim::AdamWConfig {
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    let (steps, batch, lr0) = (1500, 256, 3e-3);
    let start = std::time::Instant::now();
    let mut recent = Vec::new();
    for step in 0..steps {
        let idx = Tensor::randint(4, [batch], (Kind::Int64, Device::Cpu));
        let x0 = centers.index_select(0, &idx) + Tensor::randn([batch, 2], F32) * 0.1;
        let loss = edm_loss(&denoiser, &x0, &config).unwrap();
        opt.zero_grad();
        loss.backward();
        // 3e-3, cosine-decayed to 0.
        let lr = lr0 * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / steps as f64).cos());
        opt.step(lr);
        if step >= steps - 100 {
            recent.push(scalar(&loss));
        }
    }
    let train_s = start.elapsed().as_secs_f64();

    let sigmas = edm_sigmas(18, &config).unwrap();
    let x = Tensor::randn([2000, 2], F32) * sigmas[0];
    let out = edm_sample(&denoiser, x, &sigmas, &config, |_| {}).unwrap();
    let dist = out
        .unsqueeze(1)
        .g_sub(&centers.unsqueeze(0))
        .square()
        .sum_dim_intlist(2, false, Kind::Float)
        .sqrt(); // [N, 4]
    let (nearest, idx) = dist.min_dim(1, false);
    let near = values(&nearest);
    let idx = values(&idx);
    let within = near.iter().filter(|&&d| d < 0.5).count() as f64 / near.len() as f64;
    let mass: Vec<f64> = (0..4)
        .map(|k| idx.iter().filter(|&&i| i as usize == k).count() as f64 / idx.len() as f64)
        .collect();
    let final_loss = recent.iter().sum::<f64>() / recent.len() as f64;
    println!(
        "trained {steps} steps in {train_s:.1} s, final loss {final_loss:.3}; within 0.5 of a center {within:.3}; masses {mass:?}"
    );
    assert!(
        within > 0.8,
        "only {within} of the samples are within 0.5 of a center"
    );
    for (k, m) in mass.iter().enumerate() {
        assert!(
            (0.1875..=0.3125).contains(m),
            "mode {k} holds {m} of the mass (0.25 expected)"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Bad input.

fn err_text<T: std::fmt::Debug>(r: diffuse_core::Result<T>) -> String {
    let e = r.unwrap_err();
    assert!(
        matches!(e, diffuse_core::Error::InvalidArgument(_)),
        "{e:?}"
    );
    e.to_string()
}

#[test]
fn zero_steps_are_refused() {
    let e = err_text(edm_sigmas(0, &EdmConfig::default()));
    assert!(e.contains("at least 1 step"), "{e}");
}

#[test]
fn sigma_min_at_or_above_sigma_max_is_refused() {
    for sigma_min in [80.0, 100.0] {
        let config = EdmConfig {
            sigma_min,
            ..EdmConfig::default()
        };
        let e = err_text(edm_sigmas(18, &config));
        assert!(
            e.contains("sigma_min") && e.contains("below sigma_max"),
            "{e}"
        );
    }
}

#[test]
fn negative_churn_is_refused() {
    let calls = Cell::new(0);
    let config = EdmConfig {
        s_churn: -1.0,
        ..EdmConfig::default()
    };
    let sigmas = edm_sigmas(4, &EdmConfig::default()).unwrap();
    let x = Tensor::zeros([2, 2], F32);
    let e = err_text(edm_sample(
        &exact(0.5, 0.5, &calls),
        x,
        &sigmas,
        &config,
        |_| {},
    ));
    assert!(e.contains("s_churn"), "{e}");
    assert_eq!(calls.get(), 0);
}

#[test]
fn sigmas_that_do_not_decrease_are_refused() {
    let calls = Cell::new(0);
    let d = exact(0.5, 0.5, &calls);
    let config = EdmConfig::default();
    let x = || Tensor::zeros([2, 2], F32);
    let e = err_text(edm_sample(&d, x(), &[1.0, 2.0, 0.0], &config, |_| {}));
    assert!(e.contains("decrease"), "{e}");
    let e = err_text(edm_sample(&d, x(), &[1.0], &config, |_| {}));
    assert!(e.contains("at least two sigmas"), "{e}");
    let e = err_text(edm_sample(&d, x(), &[1.0, -0.5], &config, |_| {}));
    assert!(e.contains("non-negative"), "{e}");
    assert_eq!(calls.get(), 0);
}

#[test]
fn bad_loss_inputs_are_refused() {
    let calls = Cell::new(0);
    let d = exact(0.5, 0.5, &calls);
    let e = err_text(edm_loss(
        &d,
        &Tensor::zeros([0, 3], F32),
        &EdmConfig::default(),
    ));
    assert!(e.contains("non-empty batch"), "{e}");
    let config = EdmConfig {
        sigma_data: 0.0,
        ..EdmConfig::default()
    };
    let e = err_text(edm_loss(&d, &Tensor::zeros([2, 3], F32), &config));
    assert!(e.contains("sigma_data"), "{e}");
    assert_eq!(calls.get(), 0);
}

#[test]
fn config_defaults_and_json() {
    let c = EdmConfig::default();
    assert_eq!(
        (
            c.sigma_data,
            c.p_mean,
            c.p_std,
            c.sigma_min,
            c.sigma_max,
            c.rho
        ),
        (0.5, -1.2, 1.2, 0.002, 80.0, 7.0)
    );
    assert_eq!(
        (c.s_churn, c.s_tmin, c.s_tmax, c.s_noise),
        (0.0, 0.0, f64::INFINITY, 1.0)
    );
    let text = serde_json::to_string(&c).unwrap();
    assert!(text.contains("\"s_tmax\":1e+308"), "{text}");
    assert_eq!(serde_json::from_str::<EdmConfig>(&text).unwrap(), c);
    for s_tmax in ["null", "\"Infinity\""] {
        let c: EdmConfig = serde_json::from_str(&format!("{{\"s_tmax\": {s_tmax}}}")).unwrap();
        assert_eq!(c.s_tmax, f64::INFINITY);
    }
    let c: EdmConfig = serde_json::from_str("{\"s_churn\": 40, \"s_tmax\": 50}").unwrap();
    assert_eq!((c.s_churn, c.s_tmax, c.sigma_data), (40.0, 50.0, 0.5));
}

/// The EDM objective on the 8-Gaussian mixture of the other learning tests, sampled by the paper's
/// sampler and, through `EdmAsEpsilon`, by the discrete-schedule samplers: every mode within 25% of 1/8.
#[test]
fn edm_learns_the_eight_gaussians_for_its_sampler_and_the_others() {
    use diffuse_core::samplers::dpm_solver::{DpmSolverConfig, DpmSolverSampler};
    use diffuse_core::toy::{ToyData, MODES};
    let _g = rng_lock();
    manual_seed(7);
    let data = ToyData::EightGaussians;
    // Per-coordinate std of the ring: sqrt(1.5^2 / 2 + 0.1^2) ~ 1.07.
    let config = EdmConfig {
        sigma_data: 1.0,
        ..EdmConfig::default()
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let denoiser = EdmDenoiser::new(Mlp::new(&vs.root()), config.sigma_data);
    let mut opt = diffuse_core::tensor::optim::AdamW::new(
        &vs,
        diffuse_core::tensor::optim::AdamWConfig {
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    let steps = 3000;
    for step in 0..steps {
        let loss = edm_loss(&denoiser, &data.sample(512), &config).unwrap();
        opt.zero_grad();
        loss.backward();
        opt.step(3e-3 * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / steps as f64).cos()));
    }
    let check = |what: &str, out: &Tensor| {
        let (masses, close) = data.mode_masses(out);
        eprintln!("EDM / {what}: masses {masses:.3?}, close to the data {close:.3}");
        for (m, mass) in masses.iter().enumerate() {
            assert!(
                (mass * MODES as f64 - 1.0).abs() <= 0.25,
                "EDM / {what}: mode {m} holds {mass:.3}: {masses:.3?}"
            );
        }
    };
    let sigmas = edm_sigmas(18, &config).unwrap();
    let out = edm_sample(
        &denoiser,
        Tensor::randn([4000, 2], F32) * sigmas[0],
        &sigmas,
        &config,
        |_| {},
    )
    .unwrap();
    check("edm_sample 18 steps", &out);

    let schedule = NoiseSchedule::new(&Default::default()).unwrap();
    let bridge = EdmAsEpsilon::new(
        &denoiser,
        schedule.clone(),
        SigmaInterpolation::for_sampler(true, false),
    );
    let mut samplers: Vec<(&str, Box<dyn Sampler>)> = vec![
        (
            "euler karras 25",
            Box::new(
                EulerSampler::new(EulerConfig {
                    use_karras_sigmas: true,
                    ..Default::default()
                })
                .unwrap(),
            ),
        ),
        (
            "heun karras 25",
            Box::new(
                HeunSampler::new(HeunConfig {
                    beta_start: 0.0001,
                    beta_end: 0.02,
                    use_karras_sigmas: true,
                    ..Default::default()
                })
                .unwrap(),
            ),
        ),
        (
            "dpm++2m karras 25",
            Box::new(
                DpmSolverSampler::new(DpmSolverConfig {
                    use_karras_sigmas: true,
                    ..Default::default()
                })
                .unwrap(),
            ),
        ),
    ];
    for (what, sampler) in &mut samplers {
        sampler.set_timesteps(25).unwrap();
        let x = Tensor::randn([4000, 2], F32) * sampler.init_noise_sigma();
        let out = sample(sampler.as_mut(), &bridge, x, |_| {}).unwrap();
        check(what, &out);
    }
}
