//! Strict, atomic safetensors I/O.
//!
//! Loading reports every missing, unexpected and mis-shaped tensor in one error (tch's
//! `VarStore::load` stops at the first problem and silently ignores extras), and a corrupt or
//! truncated file is named as such. Saving goes through a temporary file and a rename, so a
//! process killed mid-save leaves the previous file readable.

use crate::atomic::write_atomic_via_path;
use crate::{Error, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// Key/value strings stored in a safetensors header (`__metadata__`).
pub type Metadata = HashMap<String, String>;

fn kind_to_dtype(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Bool => Dtype::BOOL,
        Kind::Uint8 => Dtype::U8,
        Kind::Int8 => Dtype::I8,
        Kind::Int16 => Dtype::I16,
        Kind::Int => Dtype::I32,
        Kind::Int64 => Dtype::I64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        _ => return None,
    })
}

fn dtype_to_kind(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::BOOL => Kind::Bool,
        Dtype::U8 => Kind::Uint8,
        Dtype::I8 => Kind::Int8,
        Dtype::I16 => Kind::Int16,
        Dtype::I32 => Kind::Int,
        Dtype::I64 => Kind::Int64,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        _ => return None,
    })
}

/// Save named tensors (any device; copied to the CPU) to `path` atomically, with optional metadata.
/// Tensors are laid out in name order, so the same tensors give the same data section.
pub fn save_tensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<Metadata>,
) -> Result<()> {
    let mut buffers = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let cpu = tensor.to_device(Device::Cpu).contiguous();
        let kind = cpu.kind();
        let dtype = kind_to_dtype(kind).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "tensor '{name}' has kind {kind:?}, which safetensors cannot hold"
            ))
        })?;
        let shape: Vec<usize> = cpu.size().iter().map(|&d| d as usize).collect();
        let numel = cpu.numel();
        let mut bytes = vec![0u8; numel * kind.elt_size_in_bytes()];
        cpu.f_copy_data_u8(&mut bytes, numel)?;
        buffers.push((name.clone(), dtype, shape, bytes));
    }
    let mut views = BTreeMap::new();
    for (name, dtype, shape, bytes) in &buffers {
        let view = TensorView::new(*dtype, shape.clone(), bytes)
            .map_err(|e| Error::InvalidArgument(format!("tensor '{name}': {e}")))?;
        if views.insert(name.clone(), view).is_some() {
            return Err(Error::InvalidArgument(format!(
                "tensor name '{name}' appears twice"
            )));
        }
    }
    write_atomic_via_path(path, |tmp| {
        safetensors::serialize_to_file(&views, metadata.clone(), tmp).map_err(std::io::Error::other)
    })
}

/// Tensors read from a safetensors file, in the file's (sorted) order, with the header metadata.
pub struct LoadedTensors {
    pub tensors: Vec<(String, Tensor)>,
    pub metadata: Metadata,
}

/// Read every tensor of a safetensors file onto the CPU, validating the whole file first.
pub fn load_tensors(path: &Path) -> Result<LoadedTensors> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| {
        Error::format(
            path,
            format!("not a valid safetensors file (corrupt or truncated?): {e}"),
        )
    })?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::format(path, format!("unreadable safetensors header: {e}")))?;
    let mut tensors = Vec::new();
    let mut names: Vec<String> = file.names().into_iter().map(str::to_owned).collect();
    names.sort();
    for name in names {
        let view = file
            .tensor(&name)
            .map_err(|e| Error::format(path, format!("tensor '{name}': {e}")))?;
        let kind = dtype_to_kind(view.dtype()).ok_or_else(|| {
            Error::format(
                path,
                format!(
                    "tensor '{name}' has dtype {:?}, which libtorch cannot hold",
                    view.dtype()
                ),
            )
        })?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let tensor = Tensor::f_from_data_size(view.data(), &shape, kind)?;
        tensors.push((name, tensor));
    }
    Ok(LoadedTensors {
        tensors,
        metadata: header.metadata().clone().unwrap_or_default(),
    })
}

/// Save every variable of a var store (parameters and buffers), names as the store has them.
pub fn save_var_store(vs: &VarStore, path: &Path, metadata: Option<Metadata>) -> Result<()> {
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    save_tensors(path, &named, metadata)
}

/// What a non-strict load left unmatched.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LoadReport {
    /// Model variables the file did not have: (name, model shape).
    pub missing: Vec<(String, Vec<i64>)>,
    /// File tensors the model has no variable for: (name, file shape).
    pub unexpected: Vec<(String, Vec<i64>)>,
}

impl LoadReport {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty()
    }
}

fn list(items: &[(String, Vec<i64>)]) -> String {
    items
        .iter()
        .map(|(name, shape)| format!("{name} {shape:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Copy named tensors into a var store's variables.
///
/// Shape mismatches are always errors. With `strict`, missing and unexpected names are errors
/// too; every problem is listed in one message. Values are converted to each variable's kind
/// and device (a bf16 or f16 checkpoint loads into an f32 model). `source` names the origin in
/// messages.
pub fn load_named_into(
    vs: &VarStore,
    tensors: Vec<(String, Tensor)>,
    source: &Path,
    strict: bool,
) -> Result<LoadReport> {
    let mut variables = vs.variables();
    let mut report = LoadReport::default();
    let mut mismatched = Vec::new();
    let mut matched = Vec::new();
    for (name, tensor) in tensors {
        match variables.remove(&name) {
            None => report.unexpected.push((name, tensor.size())),
            Some(var) => {
                if var.size() != tensor.size() {
                    mismatched.push(format!(
                        "{name} (model {:?}, file {:?})",
                        var.size(),
                        tensor.size()
                    ));
                } else {
                    matched.push((var, tensor));
                }
            }
        }
    }
    report.missing = variables.into_iter().map(|(n, t)| (n, t.size())).collect();
    report.missing.sort();
    report.unexpected.sort();
    let mut problems = Vec::new();
    if strict && !report.missing.is_empty() {
        problems.push(format!(
            "{} missing: {}",
            report.missing.len(),
            list(&report.missing)
        ));
    }
    if strict && !report.unexpected.is_empty() {
        problems.push(format!(
            "{} unexpected: {}",
            report.unexpected.len(),
            list(&report.unexpected)
        ));
    }
    if !mismatched.is_empty() {
        problems.push(format!(
            "{} with the wrong shape: {}",
            mismatched.len(),
            mismatched.join(", ")
        ));
    }
    if !problems.is_empty() {
        return Err(Error::Mismatch {
            path: source.to_path_buf(),
            report: problems.join("; "),
        });
    }
    tch::no_grad(|| -> Result<()> {
        for (mut var, tensor) in matched {
            let value = tensor.to_kind(var.kind()).to_device(var.device());
            var.f_copy_(&value)?;
        }
        Ok(())
    })?;
    Ok(report)
}

/// Load a safetensors file into a var store; see [`load_named_into`]. Returns the file's metadata.
pub fn load_var_store(vs: &VarStore, path: &Path, strict: bool) -> Result<(LoadReport, Metadata)> {
    let loaded = load_tensors(path)?;
    let report = load_named_into(vs, loaded.tensors, path, strict)?;
    Ok((report, loaded.metadata))
}
