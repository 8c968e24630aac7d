//! Classifier-free guidance (Ho & Salimans 2022) as a wrapper around any pair of denoisers: the
//! conditional one and the unconditional one (the same network given the null label). The guided
//! output is uncond + w (cond - uncond) in the model's own parameterisation, optionally with the
//! guidance rescale of Lin et al. 2023 (sec. 3.4) that keeps the output's std from growing with w.
//! [`ClassSpace`] is the one place every modality checks a sampling request (class, guidance)
//! against what the model was trained with, and turns it into the two label tensors.

use crate::denoiser::Denoiser;
use crate::prediction::PredictionType;
use crate::{Error, Result};
use tch::{Device, Kind, Tensor};

/// A guided denoiser built from a conditional and an unconditional one.
pub struct ClassifierFreeGuidance<'a> {
    pub conditional: &'a dyn Denoiser,
    pub unconditional: &'a dyn Denoiser,
    /// w: 0 unconditional, 1 conditional, above 1 guided.
    pub scale: f64,
    /// phi in [0, 1]: blend of the guided output and its std-rescaled version (0 = off).
    pub rescale: f64,
}

impl Denoiser for ClassifierFreeGuidance<'_> {
    fn forward(&self, x_t: &Tensor, t: &Tensor) -> Tensor {
        let cond = self.conditional.forward(x_t, t);
        if self.scale == 1.0 && self.rescale == 0.0 {
            return cond;
        }
        let uncond = self.unconditional.forward(x_t, t);
        let guided = &uncond + (&cond - &uncond) * self.scale;
        if self.rescale == 0.0 {
            return guided;
        }
        // Lin et al. 2023, eq. 15-16: match the per-example std of the conditional output.
        let dims: Vec<i64> = (1..guided.dim() as i64).collect();
        let std_cond = cond.std_dim(Some(dims.as_slice()), true, true);
        let std_guided = guided
            .std_dim(Some(dims.as_slice()), true, true)
            .clamp_min(1e-12);
        let rescaled = &guided * (std_cond / std_guided);
        rescaled * self.rescale + guided * (1.0 - self.rescale)
    }

    fn prediction_type(&self) -> PredictionType {
        self.conditional.prediction_type()
    }
}

/// Replace a fraction `p_uncond` of class labels by the null label (`null_label`), per example,
/// for training a model that serves both halves of classifier-free guidance.
pub fn drop_labels(labels: &Tensor, p_uncond: f64, null_label: i64) -> Tensor {
    let keep = Tensor::rand(labels.size(), (Kind::Float, labels.device())).ge(p_uncond);
    labels.where_self(&keep, &labels.full_like(null_label))
}

/// The classes of a model as sampling sees them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClassSpace {
    /// Whether the network takes class labels at all.
    pub class_embedded: bool,
    /// Classes the model was trained on, the null class not counted (`None`: not recorded).
    pub num_classes: Option<i64>,
    /// The label that means "no class" (trained by label dropout).
    pub null_class: Option<i64>,
    /// Names by label, when the data had them.
    pub class_names: Option<Vec<String>>,
}

/// The labels one guided sampling call feeds the network: the requested class (or the null one),
/// and the null class for the unconditional half when guidance needs it.
pub struct GuidedLabels {
    pub conditional: Option<Tensor>,
    pub unconditional: Option<Tensor>,
}

impl ClassSpace {
    /// The labels for `num` examples of `class` (`None`: the null class on a class-conditional
    /// model, no labels on an unconditional one).
    pub fn labels(&self, class: Option<i64>, num: i64, device: Device) -> Result<Option<Tensor>> {
        match (class, self.class_embedded) {
            (None, false) => Ok(None),
            (Some(_), false) => Err(Error::InvalidArgument(
                "--class: this model is not class-conditioned".into(),
            )),
            (None, true) => match self.null_class {
                Some(null) => Ok(Some(Tensor::full([num], null, (Kind::Int64, device)))),
                None => Err(Error::InvalidArgument(
                    "this model is class-conditioned and was trained without a null class: give --class".into(),
                )),
            },
            (Some(c), true) => {
                let n = self.num_classes.unwrap_or(i64::MAX);
                if c < 0 || c >= n {
                    return Err(Error::InvalidArgument(match &self.class_names {
                        Some(names) => format!(
                            "--class: {c} is out of range (the model's classes: {})",
                            numbered(names)
                        ),
                        None => format!(
                            "--class: {c} is out of range (the model has classes 0..{})",
                            n - 1
                        ),
                    }));
                }
                Ok(Some(Tensor::full([num], c, (Kind::Int64, device))))
            }
        }
    }

    /// Both halves of classifier-free guidance at scale `guidance` (with `rescale`, Lin et al.'s
    /// phi): the unconditional labels only when the output differs from the conditional one.
    pub fn guided(
        &self,
        class: Option<i64>,
        guidance: f64,
        rescale: f64,
        num: i64,
        device: Device,
    ) -> Result<GuidedLabels> {
        if !(guidance.is_finite() && guidance >= 0.0) {
            return Err(Error::InvalidArgument(format!(
                "--guidance: must be a number >= 0, got {guidance}"
            )));
        }
        if !(0.0..=1.0).contains(&rescale) {
            return Err(Error::InvalidArgument(format!(
                "--guidance-rescale: must lie in [0, 1], got {rescale}"
            )));
        }
        let conditional = self.labels(class, num, device)?;
        if guidance == 1.0 && rescale == 0.0 {
            return Ok(GuidedLabels {
                conditional,
                unconditional: None,
            });
        }
        if !self.class_embedded {
            return Err(Error::InvalidArgument(
                "--guidance: this model is not class-conditioned, so there is nothing to guide"
                    .into(),
            ));
        }
        let Some(null) = self.null_class else {
            return Err(Error::InvalidArgument(
                "--guidance: this model was not trained with a null class (train it with label dropout)".into(),
            ));
        };
        if class.is_none() {
            return Err(Error::InvalidArgument(
                "--guidance needs --class (the class to guide towards)".into(),
            ));
        }
        Ok(GuidedLabels {
            conditional,
            unconditional: Some(Tensor::full([num], null, (Kind::Int64, device))),
        })
    }

    /// A class given by name (case and punctuation ignored, so `hihat` and `Hi-Hat` are `hi-hat`)
    /// or by label.
    pub fn resolve(&self, text: &str) -> Result<i64> {
        if !self.class_embedded {
            return Err(Error::InvalidArgument(
                "--class: this model is not class-conditioned".into(),
            ));
        }
        let key = |s: &str| -> String {
            s.chars()
                .filter(|c| c.is_alphanumeric())
                .flat_map(char::to_lowercase)
                .collect()
        };
        if let Some(names) = &self.class_names {
            if let Some(i) = names.iter().position(|n| key(n) == key(text)) {
                return Ok(i as i64);
            }
        }
        match text.trim().parse::<i64>() {
            Ok(c) => Ok(c),
            Err(_) => Err(Error::InvalidArgument(match &self.class_names {
                Some(names) => format!(
                    "--class: unknown class '{text}' (the model's classes: {})",
                    numbered(names)
                ),
                None => format!("--class: expected a class number, got '{text}'"),
            })),
        }
    }
}

impl GuidedLabels {
    /// Run `f` with the denoiser these labels ask for: `make(conditional)` alone, or guided at
    /// `scale` (and `rescale`) by `make(unconditional)`. `make` builds the modality's network
    /// denoiser for a set of labels.
    pub fn with_denoiser<D: Denoiser, T>(
        self,
        scale: f64,
        rescale: f64,
        make: impl Fn(Option<Tensor>) -> D,
        f: impl FnOnce(&dyn Denoiser) -> T,
    ) -> T {
        let conditional = make(self.conditional);
        let Some(null) = self.unconditional else {
            return f(&conditional);
        };
        let unconditional = make(Some(null));
        f(&ClassifierFreeGuidance {
            conditional: &conditional,
            unconditional: &unconditional,
            scale,
            rescale,
        })
    }
}

/// "0 kick, 1 snare, ..."
fn numbered(names: &[String]) -> String {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{i} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drums() -> ClassSpace {
        ClassSpace {
            class_embedded: true,
            num_classes: Some(3),
            null_class: Some(3),
            class_names: Some(vec!["kick".into(), "snare".into(), "hi-hat".into()]),
        }
    }

    fn values(t: &Option<Tensor>) -> Option<Vec<i64>> {
        t.as_ref().map(|t| Vec::<i64>::try_from(t).unwrap())
    }

    #[test]
    fn classes_resolve_by_name_alias_or_label_and_unknown_ones_are_listed() {
        let space = drums();
        assert_eq!(space.resolve("snare").unwrap(), 1);
        assert_eq!(space.resolve("HiHat").unwrap(), 2);
        assert_eq!(space.resolve("hi_hat").unwrap(), 2);
        assert_eq!(space.resolve("0").unwrap(), 0);
        let err = space.resolve("snar").unwrap_err().to_string();
        assert!(
            err.contains("unknown class 'snar'") && err.contains("0 kick, 1 snare, 2 hi-hat"),
            "{err}"
        );
        let err = space
            .labels(Some(7), 1, Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("7 is out of range") && err.contains("2 hi-hat"),
            "{err}"
        );
        let plain = ClassSpace::default();
        assert!(plain.resolve("kick").is_err());
        assert!(plain.labels(Some(0), 1, Device::Cpu).is_err());
        assert_eq!(values(&plain.labels(None, 2, Device::Cpu).unwrap()), None);
    }

    #[test]
    fn guidance_asks_for_the_null_class_only_when_it_changes_the_output() {
        let space = drums();
        let plain = space.guided(Some(1), 1.0, 0.0, 2, Device::Cpu).unwrap();
        assert_eq!(values(&plain.conditional), Some(vec![1, 1]));
        assert!(plain.unconditional.is_none());
        let guided = space.guided(Some(1), 3.0, 0.0, 2, Device::Cpu).unwrap();
        assert_eq!(values(&guided.unconditional), Some(vec![3, 3]));
        let rescaled = space.guided(Some(0), 1.0, 0.7, 1, Device::Cpu).unwrap();
        assert!(rescaled.unconditional.is_some());
        // No class: the null class, and guidance has nothing to guide towards.
        let free = space.guided(None, 1.0, 0.0, 1, Device::Cpu).unwrap();
        assert_eq!(values(&free.conditional), Some(vec![3]));
        for (class, w, phi, want) in [
            (None, 3.0, 0.0, "--guidance needs --class"),
            (Some(0), -1.0, 0.0, "--guidance: must be a number >= 0"),
            (Some(0), f64::NAN, 0.0, "--guidance: must be a number >= 0"),
            (Some(0), 2.0, 1.5, "--guidance-rescale: must lie in [0, 1]"),
        ] {
            let err = space
                .guided(class, w, phi, 1, Device::Cpu)
                .err()
                .unwrap()
                .to_string();
            assert!(err.starts_with(want), "{err}");
        }
        let err = ClassSpace::default()
            .guided(None, 3.0, 0.0, 1, Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not class-conditioned"), "{err}");
        let no_null = ClassSpace {
            null_class: None,
            ..drums()
        };
        let err = no_null
            .guided(Some(0), 3.0, 0.0, 1, Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("without a null class") || err.contains("not trained with a null class"),
            "{err}"
        );
    }
}
