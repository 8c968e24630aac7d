//! `test` and `demo`: thin sequences of cargo runs that first make sure libtorch is there. The demo is a list
//! of steps so that later steps (an image grid, a WAV, a text sample into `out/`) are one entry each.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util::{cargo, describe};

/// Run `cmd` in the foreground and return its exit code (1 when killed by a signal).
fn status_code(cmd: &mut Command) -> Result<i32> {
    println!("xtask: {}", describe(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("running {}", describe(cmd)))?;
    Ok(status.code().unwrap_or(1))
}

fn cargo_in(repo: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(cargo());
    cmd.args(args).current_dir(repo);
    cmd
}

/// Build the `diffuse` binary the end-to-end tests drive, then `cargo test --workspace EXTRA...`;
/// returns cargo's exit code.
pub fn test(repo: &Path, extra: &[String]) -> Result<i32> {
    let code = status_code(&mut cargo_in(
        repo,
        &["build", "-p", "diffuse-cli", "--bin", "diffuse"],
    ))?;
    if code != 0 {
        return Ok(code);
    }
    let mut cmd = cargo_in(repo, &test_args(extra));
    status_code(&mut cmd)
}

/// `cargo test` with the user's arguments: the whole workspace unless they select packages themselves
/// (`-p`, `--package`, `--workspace`), since cargo lets `--workspace` win over `-p`. `--exclude` alone still
/// needs `--workspace`, so it keeps it.
fn test_args(extra: &[String]) -> Vec<&str> {
    let cargo_part = extra.iter().take_while(|a| *a != "--");
    let selects = cargo_part.into_iter().any(|a| {
        a == "-p"
            || a == "--workspace"
            || a == "--all"
            || (a.starts_with("-p") && !a.starts_with("--"))
            || a.starts_with("--package")
    });
    let mut args = vec!["test"];
    if !selects {
        args.push("--workspace");
    }
    args.extend(extra.iter().map(String::as_str));
    args
}

/// What demo steps share.
pub struct Demo {
    pub repo: PathBuf,
    /// Where steps write what they make (`<repo>/out`).
    pub out: PathBuf,
}

/// One demo step.
struct Step {
    name: &'static str,
    run: fn(&Demo) -> Result<()>,
}

/// The demo, in order.
const STEPS: &[Step] = &[
    Step {
        name: "doctor",
        run: doctor,
    },
    Step {
        name: "image grid from the bundled MNIST model",
        run: image_grid,
    },
    Step {
        name: "audio clips from the bundled drums model",
        run: audio_sample,
    },
    Step {
        name: "text from the bundled Shakespeare model",
        run: text_sample,
    },
];

/// Run every demo step, stopping at the first that fails.
pub fn demo(repo: &Path) -> Result<()> {
    let ctx = Demo {
        repo: repo.to_path_buf(),
        out: repo.join("out"),
    };
    for (i, step) in STEPS.iter().enumerate() {
        println!("demo: step {}/{}: {}", i + 1, STEPS.len(), step.name);
        (step.run)(&ctx).with_context(|| format!("demo step {}", step.name))?;
    }
    println!("demo: done");
    Ok(())
}

/// Run `diffuse ARGS...` (release build) through cargo.
fn diffuse(ctx: &Demo, args: &[&str]) -> Result<()> {
    let mut cmd = cargo_in(
        &ctx.repo,
        &[
            "run",
            "--release",
            "-p",
            "diffuse-cli",
            "--bin",
            "diffuse",
            "--",
        ],
    );
    cmd.args(args);
    let code = status_code(&mut cmd)?;
    if code != 0 {
        bail!("`diffuse {}` exited with {code}", args.join(" "));
    }
    Ok(())
}

fn doctor(ctx: &Demo) -> Result<()> {
    diffuse(ctx, &["doctor"])
}

/// 64 digits from the bundled MNIST model with DPM-Solver++(2M) in 20 steps: seconds on a CPU.
fn image_grid(ctx: &Demo) -> Result<()> {
    let model = ctx.repo.join("data").join("models").join("mnist");
    let out = ctx.out.join("mnist-grid.png");
    let (model, out) = (model.display().to_string(), out.display().to_string());
    diffuse(
        ctx,
        &[
            "sample",
            "image",
            "--model",
            &model,
            "--num",
            "64",
            "--sampler",
            "dpm++2m",
            "--steps",
            "20",
            "--seed",
            "0",
            "--out",
            &out,
        ],
    )?;
    println!("demo: wrote {out}");
    Ok(())
}

/// One drum one-shot per class (kick, snare, hi-hat, tom, cymbal) from the bundled
/// class-conditional drums model as its card measured it (classifier-free guidance at 2, DDIM in
/// 50 steps: seconds each on a CPU), each as a WAV file with its spectrogram.
fn audio_sample(ctx: &Demo) -> Result<()> {
    let model = ctx.repo.join("data").join("models").join("drums");
    let model = model.display().to_string();
    let classes = ["kick", "snare", "hi-hat", "tom", "cymbal"];
    for class in classes {
        let out = ctx.out.join(format!("drums-{class}.wav"));
        let out = out.display().to_string();
        diffuse(
            ctx,
            &[
                "sample",
                "audio",
                "--model",
                &model,
                "--class",
                class,
                "--guidance",
                "2",
                "--sampler",
                "ddim",
                "--steps",
                "50",
                "--seed",
                "0",
                "--out",
                &out,
                "--spectrogram",
            ],
        )?;
    }
    println!(
        "demo: wrote out/drums-{{{}}}.wav and their spectrograms (.png)",
        classes.join(",")
    );
    Ok(())
}

/// Two 256-character passages from the bundled Shakespeare BD3-LM (block by block, past its
/// 128-character context), printed and written to a text file.
fn text_sample(ctx: &Demo) -> Result<()> {
    let model = ctx.repo.join("data").join("models").join("shakespeare");
    let out = ctx.out.join("shakespeare.txt");
    let (model, out) = (model.display().to_string(), out.display().to_string());
    diffuse(
        ctx,
        &[
            "sample", "text", "--model", &model, "--num", "2", "--length", "256", "--seed", "0",
            "--top-p", "0.9", "--out", &out,
        ],
    )?;
    println!("demo: wrote {out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::test_args;

    fn args(extra: &[&str]) -> Vec<String> {
        let extra: Vec<String> = extra.iter().map(|a| (*a).to_owned()).collect();
        test_args(&extra).into_iter().map(str::to_owned).collect()
    }

    #[test]
    fn package_selection_replaces_the_workspace() {
        assert_eq!(args(&[]), ["test", "--workspace"]);
        assert_eq!(args(&["--release"]), ["test", "--workspace", "--release"]);
        assert_eq!(
            args(&["-p", "diffuse-tensor"]),
            ["test", "-p", "diffuse-tensor"]
        );
        assert_eq!(args(&["-pdiffuse-core"]), ["test", "-pdiffuse-core"]);
        assert_eq!(
            args(&["--package=diffuse-core", "--", "--nocapture"]),
            ["test", "--package=diffuse-core", "--", "--nocapture"]
        );
        assert_eq!(
            args(&["--workspace", "--exclude", "diffuse-e2e"]),
            ["test", "--workspace", "--exclude", "diffuse-e2e"]
        );
        assert_eq!(
            args(&["--exclude", "diffuse-e2e"]),
            ["test", "--workspace", "--exclude", "diffuse-e2e"]
        );
        // After `--` the arguments belong to the test binaries: a test filter named "-p" selects nothing.
        assert_eq!(args(&["--", "-p"]), ["test", "--workspace", "--", "-p"]);
    }
}
