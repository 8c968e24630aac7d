//! `diffuse inspect FILE.safetensors`: what a weights file holds, validated strictly
//! (a corrupt or truncated file is an error, not a partial listing).

use anyhow::Result;
use diffuse_tensor::weights::load_tensors;
use std::path::Path;

pub fn run(path: &Path, json: bool) -> Result<()> {
    if path.is_dir() {
        // A model or checkpoint folder: name the weights files it holds.
        let mut files: Vec<String> = std::fs::read_dir(path)?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".safetensors"))
            .collect();
        files.sort();
        anyhow::bail!(
            "{} is a folder; give one of its .safetensors files{}",
            path.display(),
            if files.is_empty() {
                String::new()
            } else {
                format!(" ({})", files.join(", "))
            }
        );
    }
    let loaded = load_tensors(path)?;
    let total: i64 = loaded.tensors.iter().map(|(_, t)| t.numel() as i64).sum();
    let mut metadata: Vec<_> = loaded.metadata.iter().collect();
    metadata.sort();
    if json {
        let tensors: Vec<_> = loaded
            .tensors
            .iter()
            .map(|(n, t)| serde_json::json!({"name": n, "dtype": format!("{:?}", t.kind()), "shape": t.size()}))
            .collect();
        let value = serde_json::json!({"file": path, "tensors": tensors, "parameters": total, "metadata": loaded.metadata});
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!(
        "{}: {} tensors, {} values",
        path.display(),
        loaded.tensors.len(),
        total
    );
    for (name, t) in &loaded.tensors {
        println!(
            "  {name:<48} {:<9} {:?}",
            format!("{:?}", t.kind()),
            t.size()
        );
    }
    for (k, v) in metadata {
        println!("  metadata {k} = {v}");
    }
    Ok(())
}
