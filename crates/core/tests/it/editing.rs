//! Inpainting, RePaint, SDEdit and guidance with an exactly known optimal denoiser.
//!
//! Data: every pixel of an example equals one value c ~ N(0, 1) (perfectly correlated pixels), so
//! the known half of an image determines the other half. For x_t = a x0 + s eps the optimal
//! prediction is x0_hat = a sum(x_t) / (n a^2 + s^2) in every pixel, eps_hat = (x_t - a x0_hat) / s.

use diffuse_core::denoiser::{Denoiser, FnDenoiser};
use diffuse_core::editing::{inpaint, sdedit, Resampling};
use diffuse_core::guidance::{drop_labels, ClassifierFreeGuidance};
use diffuse_core::prediction::PredictionType;
use diffuse_core::samplers::ddim::{DdimConfig, DdimSampler};
use diffuse_core::samplers::ddpm::{DdpmConfig, DdpmSampler};
use diffuse_core::samplers::euler::{EulerConfig, EulerSampler};
use diffuse_core::samplers::heun::{HeunConfig, HeunSampler};
use diffuse_core::samplers::Sampler;
use diffuse_core::schedule::NoiseSchedule;
use std::cell::Cell;
use tch::{Device, Kind, Tensor};

const PIXELS: i64 = 16;

fn constant_image_denoiser(calls: &Cell<usize>) -> impl Denoiser + '_ {
    let schedule = NoiseSchedule::new(&Default::default()).unwrap();
    FnDenoiser {
        f: move |x: &Tensor, t: &Tensor| {
            calls.set(calls.get() + 1);
            let abar = schedule.alpha_bar(t.double_value(&[0]));
            let (a, s) = (abar.sqrt(), (1.0 - abar).sqrt());
            let sum = x.sum_dim_intlist(Some([1i64, 2, 3].as_slice()), true, Kind::Float);
            let x0 = sum * (a / (PIXELS as f64 * a * a + s * s));
            (x - x0 * a) / s
        },
        prediction_type: PredictionType::Epsilon,
    }
}

/// Heun on the denoiser's schedule (diffusers' Heun defaults to Stable Diffusion's betas).
fn heun_config() -> HeunConfig {
    HeunConfig {
        beta_start: 0.0001,
        beta_end: 0.02,
        ..HeunConfig::default()
    }
}

fn samplers() -> Vec<(&'static str, Box<dyn Sampler>)> {
    let mut out: Vec<(&'static str, Box<dyn Sampler>)> = vec![
        (
            "ddpm",
            Box::new(
                DdpmSampler::new(DdpmConfig {
                    clip_sample: false,
                    ..Default::default()
                })
                .unwrap(),
            ),
        ),
        (
            "ddim",
            Box::new(
                DdimSampler::new(DdimConfig {
                    clip_sample: false,
                    ..Default::default()
                })
                .unwrap(),
            ),
        ),
        (
            "euler",
            Box::new(EulerSampler::new(EulerConfig::default()).unwrap()),
        ),
        // Two model evaluations per step (99 timesteps for 50 steps): edits must start and jump
        // back at its predictor steps.
        ("heun", Box::new(HeunSampler::new(heun_config()).unwrap())),
    ];
    for (_, s) in &mut out {
        s.set_timesteps(50).unwrap();
    }
    out
}

fn half_mask() -> Tensor {
    // Left two columns known.
    let m = Tensor::zeros([1, 1, 4, 4], (Kind::Float, Device::Cpu));
    let _ = m.narrow(3, 0, 2).fill_(1.0);
    m
}

#[test]
fn inpainting_fills_the_unknown_half_from_the_known_half() {
    let _rng = crate::rng_lock();
    tch::manual_seed(21);
    let known = Tensor::full([64, 1, 4, 4], 0.7, (Kind::Float, Device::Cpu));
    for (name, mut sampler) in samplers() {
        let calls = Cell::new(0);
        let model = constant_image_denoiser(&calls);
        let x_t =
            Tensor::randn([64, 1, 4, 4], (Kind::Float, Device::Cpu)) * sampler.init_noise_sigma();
        let out = inpaint(
            sampler.as_mut(),
            &model,
            x_t,
            &known,
            &half_mask(),
            None,
            |_, _| {},
        )
        .unwrap();
        let kept = out.narrow(3, 0, 2);
        assert!(
            (kept - 0.7).abs().max().double_value(&[]) < 1e-6,
            "{name}: known region changed"
        );
        let filled = out.narrow(3, 2, 2);
        let err = (filled - 0.7).abs().mean(Kind::Float).double_value(&[]);
        // Replacement alone harmonises imperfectly (the reason RePaint exists): deterministic DDIM
        // keeps ~0.06 of bias here, the stochastic samplers ~0.03.
        assert!(err < 0.1, "{name}: unknown half off by {err} on average");
        assert_eq!(calls.get(), sampler.timesteps().len(), "{name}");
    }
}

#[test]
fn repaint_resamples_and_still_fills_consistently() {
    let _rng = crate::rng_lock();
    tch::manual_seed(22);
    let known = Tensor::full([64, 1, 4, 4], -0.4, (Kind::Float, Device::Cpu));
    let mut sampler = DdpmSampler::new(DdpmConfig {
        clip_sample: false,
        ..Default::default()
    })
    .unwrap();
    sampler.set_timesteps(50).unwrap();
    let calls = Cell::new(0);
    let model = constant_image_denoiser(&calls);
    let x_t = Tensor::randn([64, 1, 4, 4], (Kind::Float, Device::Cpu));
    let r = Resampling {
        jump_length: 5,
        jump_n_sample: 3,
    };
    let out = inpaint(
        &mut sampler,
        &model,
        x_t,
        &known,
        &half_mask(),
        Some(r),
        |_, _| {},
    )
    .unwrap();
    // 50 steps plus, at each of the 9 jump points, 2 extra passes of 5 steps.
    assert_eq!(calls.get(), 50 + 9 * 2 * 5);
    let err = (out.narrow(3, 2, 2) + 0.4)
        .abs()
        .mean(Kind::Float)
        .double_value(&[]);
    assert!(err < 0.05, "unknown half off by {err}");
}

#[test]
fn repaint_jumps_back_whole_heun_steps() {
    let _rng = crate::rng_lock();
    tch::manual_seed(24);
    let known = Tensor::full([64, 1, 4, 4], 0.5, (Kind::Float, Device::Cpu));
    let mut sampler = HeunSampler::new(heun_config()).unwrap();
    sampler.set_timesteps(50).unwrap();
    let calls = Cell::new(0);
    let model = constant_image_denoiser(&calls);
    let x_t = Tensor::randn([64, 1, 4, 4], (Kind::Float, Device::Cpu)) * sampler.init_noise_sigma();
    let r = Resampling {
        jump_length: 5,
        jump_n_sample: 3,
    };
    let out = inpaint(
        &mut sampler,
        &model,
        x_t,
        &known,
        &half_mask(),
        Some(r),
        |_, _| {},
    )
    .unwrap();
    // 99 evaluations plus, at each of the 9 jump points, 2 extra passes of 5 steps (10 each).
    assert_eq!(calls.get(), 99 + 9 * 2 * 10);
    assert!((out.narrow(3, 0, 2) - 0.5).abs().max().double_value(&[]) < 1e-6);
    let err = (out.narrow(3, 2, 2) - 0.5)
        .abs()
        .mean(Kind::Float)
        .double_value(&[]);
    assert!(err < 0.1, "unknown half off by {err}");
}

#[test]
fn sdedit_runs_the_strength_fraction_of_steps_and_keeps_a_clean_image() {
    let _rng = crate::rng_lock();
    tch::manual_seed(23);
    let image = Tensor::full([16, 1, 4, 4], 0.3, (Kind::Float, Device::Cpu));
    for (name, mut sampler) in samplers() {
        let calls = Cell::new(0);
        let model = constant_image_denoiser(&calls);
        let same = sdedit(sampler.as_mut(), &model, &image, 0.0, |_| {}).unwrap();
        assert!(
            same.equal(&image) && calls.get() == 0,
            "{name}: strength 0 must not change the input"
        );
        let out = sdedit(sampler.as_mut(), &model, &image, 0.1, |_| {}).unwrap();
        // 5 of the 50 steps: for Heun the last 5 predictor-corrector pairs minus the final
        // corrector it never takes.
        let evaluations = if name == "heun" { 9 } else { 5 };
        assert_eq!(calls.get(), evaluations, "{name}");
        // Every strength starts at a step the sampler can start from.
        for strength in [0.1, 0.25, 0.5, 0.75, 0.9, 1.0] {
            let _ = sdedit(sampler.as_mut(), &model, &image, strength, |_| {})
                .unwrap_or_else(|e| panic!("{name} at strength {strength}: {e}"));
        }
        // Strength 0.1 noises to t ~ 100 (alpha_bar ~ 0.9): the posterior of the image's value has
        // std ~ 0.08, so the edit stays near 0.3 and, the model being exact, stays constant per image.
        let err = (&out - 0.3).abs().mean(Kind::Float).double_value(&[]);
        assert!(err < 0.2, "{name}: edited image drifted by {err}");
        let spread = (&out - out.mean_dim(Some([1i64, 2, 3].as_slice()), true, Kind::Float))
            .abs()
            .max()
            .double_value(&[]);
        assert!(
            spread < 0.05,
            "{name}: edited images are no longer constant ({spread})"
        );
        assert!(sdedit(sampler.as_mut(), &model, &image, 1.5, |_| {}).is_err());
    }
}

#[test]
fn masks_and_known_images_of_the_wrong_shape_are_refused() {
    let mut sampler = DdimSampler::new(DdimConfig::default()).unwrap();
    sampler.set_timesteps(5).unwrap();
    let calls = Cell::new(0);
    let model = constant_image_denoiser(&calls);
    let x = Tensor::zeros([2, 1, 4, 4], (Kind::Float, Device::Cpu));
    let bad_mask = Tensor::ones([1, 1, 3, 4], (Kind::Float, Device::Cpu));
    let err = inpaint(
        &mut sampler,
        &model,
        x.copy(),
        &x,
        &bad_mask,
        None,
        |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("does not broadcast"), "{err}");
    let small = Tensor::zeros([2, 1, 2, 2], (Kind::Float, Device::Cpu));
    let err = inpaint(
        &mut sampler,
        &model,
        x.copy(),
        &small,
        &half_mask(),
        None,
        |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("known image has shape"), "{err}");
}

#[test]
fn guidance_interpolates_and_extrapolates_between_the_two_models() {
    let cond = FnDenoiser {
        f: |x: &Tensor, _t: &Tensor| x.ones_like() * 2.0,
        prediction_type: PredictionType::Epsilon,
    };
    let uncond = FnDenoiser {
        f: |x: &Tensor, _t: &Tensor| x.zeros_like(),
        prediction_type: PredictionType::Epsilon,
    };
    let x = Tensor::randn([3, 1, 2, 2], (Kind::Float, Device::Cpu));
    let t = Tensor::zeros([3], (Kind::Float, Device::Cpu));
    for (w, want) in [(0.0, 0.0), (1.0, 2.0), (3.0, 6.0)] {
        let g = ClassifierFreeGuidance {
            conditional: &cond,
            unconditional: &uncond,
            scale: w,
            rescale: 0.0,
        };
        let out = g.forward(&x, &t);
        assert!((out - want).abs().max().double_value(&[]) < 1e-6, "w = {w}");
    }
    // Rescale 1 matches the conditional output's std per example.
    let wavy = FnDenoiser {
        f: |x: &Tensor, _t: &Tensor| x * 2.0,
        prediction_type: PredictionType::Epsilon,
    };
    let g = ClassifierFreeGuidance {
        conditional: &wavy,
        unconditional: &uncond,
        scale: 5.0,
        rescale: 1.0,
    };
    let out = g.forward(&x, &t);
    let want = (&x * 2.0).std_dim(Some([1i64, 2, 3].as_slice()), true, false);
    let got = out.std_dim(Some([1i64, 2, 3].as_slice()), true, false);
    assert!((got - want).abs().max().double_value(&[]) < 1e-5);
}

#[test]
fn label_dropout_drops_the_requested_fraction() {
    let _rng = crate::rng_lock();
    tch::manual_seed(5);
    let labels = Tensor::arange(10, (Kind::Int64, Device::Cpu)).repeat([2000]);
    let dropped = drop_labels(&labels, 0.1, 10);
    let fraction = dropped
        .eq(10)
        .to_kind(Kind::Float)
        .mean(Kind::Float)
        .double_value(&[]);
    assert!((fraction - 0.1).abs() < 0.01, "{fraction}");
    let kept = dropped.ne(10);
    assert!(dropped
        .masked_select(&kept)
        .equal(&labels.masked_select(&kept)));
}
