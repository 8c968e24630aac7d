//! Infinite floats in JSON configs. JSON has no infinity: Python writes bare `Infinity` /
//! `-Infinity` (which [`crate::scheduler_config::quote_non_finite`] turns into strings), serde_json
//! writes null. Fields that may be infinite read all of these, and numbers beyond +-1e300, and are
//! written as +-1e308: valid JSON that diffusers and diffuse both treat as infinite.

use serde::{Deserialize, Deserializer, Serializer};

fn parse<'de, D: Deserializer<'de>>(d: D, if_null: f64, field: &str) -> Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(f64),
        Text(String),
        Null(()),
    }
    match Option::<Raw>::deserialize(d)? {
        None | Some(Raw::Null(())) => Ok(if_null),
        Some(Raw::Number(x)) if x >= 1e300 => Ok(f64::INFINITY),
        Some(Raw::Number(x)) if x <= -1e300 => Ok(f64::NEG_INFINITY),
        Some(Raw::Number(x)) => Ok(x),
        Some(Raw::Text(t)) => match t.as_str() {
            "Infinity" | "inf" => Ok(f64::INFINITY),
            "-Infinity" | "-inf" => Ok(f64::NEG_INFINITY),
            other => Err(serde::de::Error::custom(format!(
                "{field} must be a number or +-Infinity, got \"{other}\""
            ))),
        },
    }
}

/// A float whose null means -infinity (e.g. `lambda_min_clipped`).
pub(crate) fn null_is_neg_infinity<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    parse(d, f64::NEG_INFINITY, "value")
}

/// A float whose null means +infinity (e.g. `s_tmax`).
pub(crate) fn null_is_infinity<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    parse(d, f64::INFINITY, "value")
}

/// Write +-infinity as +-1e308.
pub(crate) fn write_finite<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(if x.is_infinite() {
        1e308f64.copysign(*x)
    } else {
        *x
    })
}
