//! The variational bound against closed forms for Gaussian data with the exact denoiser, a sane
//! bits/dim, and the hybrid loss's stop-gradient.

use diffuse_core::denoiser::FnDenoiser;
use diffuse_core::prediction::PredictionType;
use diffuse_core::samplers::ddpm::VarianceType;
use diffuse_core::schedule::NoiseSchedule;
use diffuse_core::vlb::{bits_per_dim, dataset_bits_per_dim, hybrid_loss, VlbTables};
use tch::{Device, Kind, Tensor};

const S0: f64 = 0.5;

/// For x0 ~ N(0, S0^2) per dimension the posterior mean is E[x0 | x_t] = a S0^2 x_t / (a^2 S0^2 + s^2).
fn exact_eps(schedule: &NoiseSchedule, x: &Tensor, t: &Tensor) -> Tensor {
    let abar = schedule.alpha_bar(t.double_value(&[0]));
    let (a, s) = (abar.sqrt(), (1.0 - abar).sqrt());
    let x0 = x * (a * S0 * S0 / (a * a * S0 * S0 + s * s));
    (x - x0 * a) / s
}

#[test]
fn kl_terms_equal_their_closed_form_for_gaussian_data() {
    let _rng = crate::rng_lock();
    tch::manual_seed(31);
    let schedule = NoiseSchedule::new(&Default::default()).unwrap();
    let tables = VlbTables::new(schedule.clone());
    let n = 4096;
    for t in [1usize, 10, 100, 500, 999] {
        let x0 = Tensor::randn([n, 1, 2, 2], (Kind::Float, Device::Cpu)) * S0;
        let x_t = schedule.add_noise(&x0, &Tensor::randn_like(&x0), &vec![t as f64; n as usize]);
        let t_in = Tensor::full([n], t as f64, (Kind::Float, Device::Cpu));
        let out = exact_eps(&schedule, &x_t, &t_in);
        let got = tables
            .term_bpd(
                &out,
                &x0,
                &x_t,
                &vec![t; n as usize],
                PredictionType::Epsilon,
                VarianceType::FixedSmall,
                false,
            )
            .unwrap()
            .mean(Kind::Double)
            .double_value(&[]);
        // KL of equal-variance Gaussians: coef_x0^2 Var(x0 | x_t) / (2 beta-tilde), in nats.
        let abar = schedule.alphas_cumprod()[t];
        let post = schedule.posterior(t as f64, Some((t - 1) as f64));
        let var_x0 = S0 * S0 * (1.0 - abar) / (abar * S0 * S0 + 1.0 - abar);
        let want = post.coef_x0.powi(2) * var_x0 / (2.0 * post.variance) / std::f64::consts::LN_2;
        // 16384 squared Gaussians: relative standard error ~1.1%.
        assert!(
            (got / want - 1.0).abs() < 0.05,
            "t={t}: bound term {got} bits/dim, closed form {want}"
        );
    }
}

#[test]
fn bits_per_dim_of_discretised_gaussian_data_sits_just_above_its_entropy() {
    let _rng = crate::rng_lock();
    tch::manual_seed(32);
    let schedule = NoiseSchedule::new(&Default::default()).unwrap();
    let tables = VlbTables::new(schedule.clone());
    // 8-bit data: N(0, S0^2) rounded to the 256 levels of [-1, 1].
    let x0 = ((Tensor::randn([64, 1, 2, 2], (Kind::Float, Device::Cpu)) * S0).clamp(-1.0, 1.0)
        * 127.5)
        .round()
        / 127.5;
    let exact = FnDenoiser {
        f: |x: &Tensor, t: &Tensor| {
            exact_eps(&NoiseSchedule::new(&Default::default()).unwrap(), x, t)
        },
        prediction_type: PredictionType::Epsilon,
    };
    let mut terms = 0;
    let bpd = bits_per_dim(&tables, &exact, &x0, VarianceType::FixedSmall, |_| {
        terms += 1
    })
    .unwrap();
    assert_eq!(terms, 1000);
    let bpd = bpd.mean(Kind::Double).double_value(&[]);
    // Entropy of N(0, S0^2) discretised to bins of width 2/255, in bits.
    let entropy = 0.5 * (2.0 * std::f64::consts::PI * std::f64::consts::E * S0 * S0).log2()
        - (2.0f64 / 255.0).log2();
    eprintln!("exact denoiser: {bpd:.3} bits/dim; entropy of the data {entropy:.3}");
    assert!(
        bpd > entropy - 0.1 && bpd < entropy + 1.0,
        "bits/dim {bpd}, entropy {entropy}"
    );

    // An untrained (zero) model: finite and far worse.
    let zero = FnDenoiser {
        f: |x: &Tensor, _t: &Tensor| x.zeros_like(),
        prediction_type: PredictionType::Epsilon,
    };
    let bad = bits_per_dim(&tables, &zero, &x0, VarianceType::FixedSmall, |_| {})
        .unwrap()
        .mean(Kind::Double)
        .double_value(&[]);
    eprintln!("zero model: {bad:.3} bits/dim");
    assert!(
        bad.is_finite() && bad > bpd + 0.5,
        "untrained model: {bad} bits/dim vs {bpd}"
    );
}

#[test]
fn hybrid_loss_trains_only_the_variance_through_the_bound() {
    let _rng = crate::rng_lock();
    tch::manual_seed(33);
    let schedule = NoiseSchedule::new(&Default::default()).unwrap();
    let tables = VlbTables::new(schedule.clone());
    let x0 = Tensor::rand([4, 1, 2, 2], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let noise = Tensor::randn_like(&x0);
    let timesteps = [0i64, 3, 400, 999];
    let x_t = schedule.add_noise(&x0, &noise, &timesteps.map(|t| t as f64));
    // The mean channels predict the noise exactly: the MSE part and its gradient are zero.
    let output =
        Tensor::cat(&[noise.shallow_clone(), Tensor::zeros_like(&x0)], 1).set_requires_grad(true);
    let loss = hybrid_loss(
        &tables,
        &output,
        &noise,
        &x0,
        &x_t,
        &timesteps,
        PredictionType::Epsilon,
        VarianceType::LearnedRange,
        0.001,
    )
    .unwrap();
    loss.backward();
    let grad = output.grad();
    let mean_grad = grad.narrow(1, 0, 1).abs().max().double_value(&[]);
    let var_grad = grad.narrow(1, 1, 1).abs().max().double_value(&[]);
    assert_eq!(
        mean_grad, 0.0,
        "the bound term must not reach the mean channels"
    );
    assert!(
        var_grad > 0.0,
        "the bound term must train the variance channels"
    );
    let err = hybrid_loss(
        &tables,
        &noise,
        &noise,
        &x0,
        &x_t,
        &timesteps,
        PredictionType::Epsilon,
        VarianceType::FixedSmall,
        0.001,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("learned variance"), "{err}");
}

#[test]
fn dataset_bits_per_dim_averages_the_batches() {
    let _rng = crate::rng_lock();
    let schedule = NoiseSchedule::new(&Default::default()).unwrap();
    let tables = VlbTables::new(schedule);
    let zero = FnDenoiser {
        f: |x: &Tensor, _t: &Tensor| x.zeros_like(),
        prediction_type: PredictionType::Epsilon,
    };
    tch::manual_seed(34);
    let data =
        (Tensor::rand([12, 1, 2, 2], (Kind::Float, Device::Cpu)) * 255.0).round() / 127.5 - 1.0;
    let batches: Vec<Tensor> = data.split(4, 0);
    tch::manual_seed(35);
    let whole =
        dataset_bits_per_dim(&tables, &zero, batches, Some(12), VarianceType::FixedSmall).unwrap();
    tch::manual_seed(35);
    let mut per_batch = 0.0;
    for batch in data.split(4, 0) {
        per_batch += bits_per_dim(&tables, &zero, &batch, VarianceType::FixedSmall, |_| {})
            .unwrap()
            .sum(Kind::Double)
            .double_value(&[]);
    }
    assert!(
        (whole - per_batch / 12.0).abs() < 1e-9,
        "{whole} vs {}",
        per_batch / 12.0
    );
    assert!(dataset_bits_per_dim(
        &tables,
        &zero,
        Vec::<Tensor>::new(),
        None,
        VarianceType::FixedSmall
    )
    .is_err());
}
