//! The benchmark harness. Each registered benchmark has a Rust side (`target/release/diffuse-bench NAME
//! --device DEV`, from `crates/cli`) and a PyTorch side (`python3 xtask/bench/NAME.py --device DEV`, run in a
//! reference environment with diffusers and the same torch that setup provides). Both print JSON lines on
//! stdout, `{"case": "...", "ms": <time per iteration>, "work": "<optional human text>"}`; other lines are
//! ignored. The harness runs diffuse and then PyTorch in one run, matches cases by name, prints a table and
//! rewrites the benchmark's section of BENCHMARKS.md, leaving the other sections as they are.
//!
//! For trying the harness without the real programs: `DIFFUSE_BENCH_BIN` replaces the Rust binary (and skips
//! building it) and `DIFFUSE_BENCH_SCRIPTS` replaces the folder of Python scripts.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::libtorch::{self, Ready};
use crate::util::{self, describe, remove_path, write_atomic};

/// A registered benchmark.
#[derive(Clone, Copy, Debug)]
pub struct Bench {
    pub name: &'static str,
    pub description: &'static str,
}

/// Every benchmark `cargo xtask bench` knows, in the order a bare `bench` runs them.
pub const BENCHES: &[Bench] = &[
    Bench {
        name: "matmul",
        description: "f32 matrix multiply, GFLOP/s",
    },
    Bench {
        name: "train_step",
        description: "forward+backward+AdamW step of a small conv net",
    },
    Bench {
        name: "sampler_step",
        description: "per-step overhead of each sampler, model excluded, beside one forward of the 1.1M-parameter UNet2d",
    },
    Bench {
        name: "sampler_quality",
        description: "8-Gaussian mixture, one trained MLP: quality per model evaluation, diffuse's samplers vs diffusers' (CPU only)",
    },
    Bench {
        name: "image",
        description: "UNet2d vs diffusers' UNet2DModel (bundled MNIST architecture): train step, forward, 20-step sampling, peak memory",
    },
    Bench {
        name: "text",
        description: "text transformer vs the same network in PyTorch (bundled Shakespeare architecture): MDLM train step, forward, 128-step MDLM sampling with and without the cache, peak memory",
    },
    Bench {
        name: "text_quality",
        description: "validation bits/char on every held-out window after the same training time on Shakespeare (cosine decay over the budget, EMA), for the autoregressive baseline, BD3-LM with blocks of 4 and 16, MDLM and D3PM absorbing (MDLM also in PyTorch; DIFFUSE_BENCH_SECONDS per process, default 120; DIFFUSE_BENCH_TEXT_CASES picks cases and recipes)",
    },
    Bench {
        name: "audio",
        description: "DiffWave (default config) vs the same network in PyTorch: train step, 1 s of 16 kHz audio in 6 (DiffWave fast), 50 and 200 (DDPM) steps with real-time factors, UNet1d train step; the bundled drums model (the audio recipe): 5 clips by guided DDIM in 50 steps and its train step at batch 16 x 8192; peak memory",
    },
    Bench {
        name: "dist",
        description: "data-parallel scaling: the bundled MNIST UNet's training step (32 images per rank) as 1 process and as 2 processes (c10d Gloo on CPU, NCCL on CUDA), one thread each, with the gradient all-reduce time per step; PyTorch DDP beside it",
    },
    Bench {
        name: "threads",
        description: "what a busy neighbour costs: 20-step DPM-Solver++ 2M sampling of 4 MNIST-UNet images in a fresh process with libgomp's default spin-wait, diffuse's default (threads for the cores other processes leave free), a passive wait, a short spin and 1 thread, on an idle machine and beside one busy process",
    },
    Bench {
        name: "poisson",
        description: "MNIST pixel counts: count diffusion vs Gaussian diffusion on the bundled MNIST UNet after the same training time (DIFFUSE_BENCH_SECONDS per process, default 300): classifier-Fréchet of 500 samples in 50 steps, bits/dim, sampling time",
    },
];

/// The pip requirements of the Python reference environment; torch is not among them (setup's is reused).
pub const PYREF_REQUIREMENTS: &[&str] = &["diffusers==0.42.1"];

/// Look a benchmark up by name.
pub fn lookup(name: &str) -> Result<Bench> {
    match BENCHES.iter().find(|b| b.name == name) {
        Some(b) => Ok(*b),
        None => {
            let names: Vec<&str> = BENCHES.iter().map(|b| b.name).collect();
            bail!(
                "unknown benchmark {name:?}; registered: {}",
                names.join(", ")
            )
        }
    }
}

/// One result line.
#[derive(Clone, Debug, PartialEq)]
pub struct Case {
    pub case: String,
    pub ms: f64,
    pub work: Option<String>,
}

/// The result lines in a program's stdout: JSON objects with a string `case` and a finite, non-negative
/// number `ms` (optional string `work`). Everything else is ignored; a repeated case keeps its last value.
pub fn parse_cases(stdout: &str) -> Vec<Case> {
    let mut cases: Vec<Case> = Vec::new();
    for line in stdout.lines().map(str::trim).filter(|l| l.starts_with('{')) {
        let Ok(serde_json::Value::Object(obj)) = serde_json::from_str(line) else {
            continue;
        };
        let (Some(case), Some(ms)) = (
            obj.get("case").and_then(|v| v.as_str()),
            obj.get("ms").and_then(|v| v.as_f64()),
        ) else {
            continue;
        };
        if !ms.is_finite() || ms < 0.0 {
            continue;
        }
        let work = obj.get("work").and_then(|v| v.as_str()).map(str::to_owned);
        let new = Case {
            case: case.to_owned(),
            ms,
            work,
        };
        match cases.iter_mut().find(|c| c.case == new.case) {
            Some(old) => *old = new,
            None => cases.push(new),
        }
    }
    cases
}

/// A table row: one case, timed by either side or both.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub case: String,
    pub diffuse_ms: Option<f64>,
    pub torch_ms: Option<f64>,
    pub work: Option<String>,
}

impl Row {
    /// PyTorch ms / diffuse ms: above 1 means diffuse is faster.
    pub fn ratio(&self) -> Option<f64> {
        match (self.diffuse_ms, self.torch_ms) {
            (Some(d), Some(t)) if d > 0.0 => Some(t / d),
            _ => None,
        }
    }
}

/// Match cases by name: diffuse's order first, then cases only PyTorch reported.
pub fn match_cases(diffuse: &[Case], torch: &[Case]) -> Vec<Row> {
    let mut rows: Vec<Row> = diffuse
        .iter()
        .map(|d| {
            let t = torch.iter().find(|t| t.case == d.case);
            Row {
                case: d.case.clone(),
                diffuse_ms: Some(d.ms),
                torch_ms: t.map(|t| t.ms),
                // Where the two sides describe their result differently (e.g. sample quality), show both.
                work: match (d.work.clone(), t.and_then(|t| t.work.clone())) {
                    (Some(dw), Some(tw)) if dw != tw => {
                        Some(format!("diffuse: {dw}; PyTorch: {tw}"))
                    }
                    (dw, tw) => dw.or(tw),
                },
            }
        })
        .collect();
    for t in torch
        .iter()
        .filter(|t| !diffuse.iter().any(|d| d.case == t.case))
    {
        rows.push(Row {
            case: t.case.clone(),
            diffuse_ms: None,
            torch_ms: Some(t.ms),
            work: t.work.clone(),
        });
    }
    rows
}

/// Milliseconds with about three significant digits.
pub fn format_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.1}")
    } else if ms >= 10.0 {
        format!("{ms:.2}")
    } else if ms >= 0.1 {
        format!("{ms:.3}")
    } else {
        format!("{ms:.4}")
    }
}

/// The ratio column: `1.23x`, or `-` when a side is missing.
pub fn format_ratio(ratio: Option<f64>) -> String {
    ratio
        .map(|r| format!("{r:.2}x"))
        .unwrap_or_else(|| "-".into())
}

/// The results as a Markdown table (readable as is in a terminal too).
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| case | diffuse ms | PyTorch ms | ratio | work |\n|---|---:|---:|---:|---|\n",
    );
    let ms = |v: Option<f64>| v.map(format_ms).unwrap_or_else(|| "-".into());
    for r in rows {
        out += &format!(
            "| {} | {} | {} | {} | {} |\n",
            r.case.replace('|', "\\|"),
            ms(r.diffuse_ms),
            ms(r.torch_ms),
            format_ratio(r.ratio()),
            r.work.as_deref().unwrap_or("").replace('|', "\\|")
        );
    }
    out
}

/// The top of a new BENCHMARKS.md.
pub const HEADER: &str = "# Benchmarks\n\n\
Written by `cargo xtask bench`: each benchmark runs in diffuse (`target/release/diffuse-bench NAME`) and in PyTorch\n\
(`xtask/bench/NAME.py`, diffusers' reference environment) in one run on one machine. Times are milliseconds per\n\
iteration; ratio = PyTorch ms / diffuse ms, so above 1 means diffuse is faster. Each section below is rewritten by its\n\
benchmark; text outside the sections is kept.\n";

/// What a section records about its run.
#[derive(Clone, Debug)]
pub struct RunInfo {
    pub command: String,
    pub date: String,
    pub device: String,
    pub machine: String,
    pub versions: String,
}

/// The key of a benchmark's section: one per benchmark and device, so CPU and CUDA figures sit side by side.
pub fn section_key(name: &str, device: &str) -> String {
    format!("{name}:{device}")
}

fn markers(name: &str) -> (String, String) {
    (
        format!("<!-- bench:{name}:start -->"),
        format!("<!-- bench:{name}:end -->"),
    )
}

/// A benchmark's whole section, markers included.
pub fn section(bench: &Bench, info: &RunInfo, rows: &[Row]) -> String {
    let (start, end) = markers(&section_key(bench.name, &info.device));
    format!(
        "{start}\n## {} on {} ({})\n\n- command: `{}`\n- date: {}\n- device: {}\n- machine: {}\n- versions: {}\n\n{}{end}\n",
        bench.name,
        info.device,
        bench.description,
        info.command,
        info.date,
        info.device,
        info.machine,
        info.versions,
        table(rows)
    )
}

/// Put `section` (markers included) in place of benchmark `name`'s section, or append it; the rest of `doc`
/// is kept byte for byte. An empty document gets the header first.
pub fn replace_section(doc: &str, name: &str, section: &str) -> Result<String> {
    let (start, end) = markers(name);
    let section = section.trim_end_matches('\n');
    if let Some(s) = doc.find(&start) {
        let Some(e) = doc[s..].find(&end).map(|i| s + i + end.len()) else {
            bail!("BENCHMARKS.md has {start} without {end}; fix the file by hand");
        };
        return Ok(format!("{}{section}{}", &doc[..s], &doc[e..]));
    }
    let mut out = if doc.trim().is_empty() {
        HEADER.to_owned()
    } else {
        doc.to_owned()
    };
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push('\n');
    out.push_str(section);
    out.push('\n');
    Ok(out)
}

/// CPU model, core count, memory, and the GPU when the device is CUDA.
pub fn machine(device: &str) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb: Option<f64> = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
    let mut text = format!("{cpu}, {cores} cores");
    if let Some(kb) = mem_kb {
        text += &format!(", {:.1} GiB memory", kb / (1024.0 * 1024.0));
    }
    if device.starts_with("cuda") {
        let gpu = Command::new("nvidia-smi")
            .args([
                "--query-gpu=name,memory.total,driver_version",
                "--format=csv,noheader",
            ])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .map(|l| l.trim().to_owned())
            });
        text += &format!(
            ", GPU: {}",
            gpu.unwrap_or_else(|| "unknown (nvidia-smi gave nothing)".into())
        );
    }
    text
}

/// The Python reference environment: the interpreter, its `PYTHONPATH`, and the versions it imports.
#[derive(Clone, Debug)]
pub struct PyRef {
    pub python: String,
    pub pythonpath: OsString,
    pub torch: String,
    pub diffusers: String,
}

/// Install (once) the reference packages into `target/pyref`, reusing setup's torch, and check they import.
pub fn ensure_pyref(repo: &Path, python: &str, libtorch: &Ready) -> Result<PyRef> {
    let dir = repo.join("target").join("pyref");
    let stamp_path = dir.join(".requirements");
    let wanted = PYREF_REQUIREMENTS.join("\n") + "\n";
    if std::fs::read_to_string(&stamp_path).ok().as_deref() != Some(wanted.as_str()) {
        install_pyref(&dir, python, &wanted)?;
    }
    let mut paths = vec![dir];
    // Setup's torch is importable from its package folder unless it is the interpreter's own.
    let torch_dir = libtorch::default_dir(repo)
        .canonicalize()
        .unwrap_or_else(|_| libtorch::default_dir(repo));
    if libtorch.source != "python" && torch_dir.join("__init__.py").is_file() {
        paths.extend(torch_dir.parent().map(Path::to_path_buf));
    }
    if let Some(existing) = std::env::var_os("PYTHONPATH") {
        paths.extend(std::env::split_paths(&existing));
    }
    let pythonpath = std::env::join_paths(&paths).context("building PYTHONPATH")?;
    let out = Command::new(python)
        .args([
            "-c",
            "import torch, diffusers; print(torch.__version__); print(diffusers.__version__)",
        ])
        .env("PYTHONPATH", &pythonpath)
        .output()
        .with_context(|| format!("running {python}"))?;
    if !out.status.success() {
        bail!(
            "the Python reference environment (target/pyref + setup's torch) does not import: {}",
            util::failure_line(&out)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().map(str::trim);
    let torch = lines.next().unwrap_or_default().to_owned();
    let diffusers = lines.next().unwrap_or_default().to_owned();
    Ok(PyRef {
        python: python.to_owned(),
        pythonpath,
        torch,
        diffusers,
    })
}

fn install_pyref(dir: &Path, python: &str, wanted: &str) -> Result<()> {
    // Into a scratch folder renamed into place when complete, like libtorch.
    let partial = dir.with_file_name("pyref.partial");
    remove_path(&partial)?;
    let mut cmd = util::pip(python, "install");
    cmd.args(["--quiet", "--no-warn-script-location", "--target"])
        .arg(&partial)
        .args(PYREF_REQUIREMENTS);
    println!(
        "bench: installing the Python reference environment: {}",
        describe(&cmd)
    );
    let status = cmd
        .status()
        .with_context(|| format!("running {}", describe(&cmd)))?;
    if !status.success() {
        remove_path(&partial)?;
        bail!(
            "installing the Python reference environment failed ({status}); see pip's output above"
        );
    }
    // A dependency that dragged torch in would shadow setup's libtorch with another copy: drop it.
    for name in ["torch", "nvidia", "triton"] {
        if partial.join(name).exists() {
            println!("bench: removing {name} from target/pyref (setup's torch is used instead)");
            remove_path(&partial.join(name))?;
        }
    }
    write_atomic(&partial.join(".requirements"), wanted.as_bytes())?;
    remove_path(dir)?;
    std::fs::rename(&partial, dir)
        .with_context(|| format!("renaming {} to {}", partial.display(), dir.display()))
}

/// Run one side and collect its cases; its stderr goes straight to the terminal.
fn run_side(label: &str, cmd: &mut Command) -> Result<Vec<Case>> {
    println!("bench: {label}: {}", describe(cmd));
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", describe(cmd)))?;
    if !out.status.success() {
        bail!("{label} failed ({}): {}", out.status, describe(cmd));
    }
    let cases = parse_cases(&String::from_utf8_lossy(&out.stdout));
    if cases.is_empty() {
        bail!(
            "{label} printed no result line (a JSON line {{\"case\": ..., \"ms\": ...}} on stdout)"
        );
    }
    Ok(cases)
}

/// What `cargo xtask bench` was asked for.
#[derive(Clone, Debug)]
pub struct Options {
    /// Empty: every registered benchmark.
    pub names: Vec<String>,
    pub device: String,
    /// The command as typed, for the BENCHMARKS.md sections.
    pub command: String,
}

/// Run the benchmarks and update BENCHMARKS.md; fails at the end if any benchmark failed.
pub fn run(repo: &Path, libtorch: &Ready, opts: &Options) -> Result<()> {
    let benches: Vec<Bench> = if opts.names.is_empty() {
        BENCHES.to_vec()
    } else {
        opts.names
            .iter()
            .map(|n| lookup(n))
            .collect::<Result<_>>()?
    };
    let pyref = ensure_pyref(repo, "python3", libtorch)?;
    let bin = match std::env::var_os("DIFFUSE_BENCH_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => {
            let mut cmd = Command::new(util::cargo());
            cmd.args([
                "build",
                "--release",
                "-p",
                "diffuse-cli",
                "--bin",
                "diffuse-bench",
            ])
            .current_dir(repo);
            println!("bench: {}", describe(&cmd));
            let status = cmd
                .status()
                .with_context(|| format!("running {}", describe(&cmd)))?;
            if !status.success() {
                bail!("building diffuse-bench failed ({status})");
            }
            repo.join("target").join("release").join("diffuse-bench")
        }
    };
    let scripts = std::env::var_os("DIFFUSE_BENCH_SCRIPTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("xtask").join("bench"));
    let info = RunInfo {
        command: opts.command.clone(),
        date: util::today_utc(),
        device: opts.device.clone(),
        machine: machine(&opts.device),
        versions: format!(
            "diffuse {} on libtorch {}; PyTorch {}, diffusers {}",
            env!("CARGO_PKG_VERSION"),
            libtorch.version,
            pyref.torch,
            pyref.diffusers
        ),
    };
    let doc_path = repo.join("BENCHMARKS.md");
    let mut failed = Vec::new();
    for bench in &benches {
        match run_one(bench, &bin, &scripts, &pyref, &opts.device) {
            Ok((rows, peer_failure)) => {
                if let Some(e) = peer_failure {
                    // diffuse's rows are kept (a long run is not thrown away for its peer), and
                    // the benchmark still counts as failed.
                    eprintln!("error: {}: {e:#} (diffuse's rows are kept)", bench.name);
                    failed.push(bench.name);
                }
                println!(
                    "\n{} ({}) on {}\n{}",
                    bench.name,
                    bench.description,
                    opts.device,
                    table(&rows)
                );
                let doc = std::fs::read_to_string(&doc_path).unwrap_or_default();
                let doc = replace_section(
                    &doc,
                    &section_key(bench.name, &info.device),
                    &section(bench, &info, &rows),
                )?;
                write_atomic(&doc_path, doc.as_bytes())?;
            }
            Err(e) => {
                eprintln!("error: {}: {e:#}", bench.name);
                failed.push(bench.name);
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} benchmarks failed: {}",
            failed.len(),
            benches.len(),
            failed.join(", ")
        );
    }
    println!("bench: updated {}", doc_path.display());
    Ok(())
}

/// One benchmark's rows, and the PyTorch side's failure when only that side failed (its
/// cases are then missing from the rows).
fn run_one(
    bench: &Bench,
    bin: &Path,
    scripts: &Path,
    pyref: &PyRef,
    device: &str,
) -> Result<(Vec<Row>, Option<anyhow::Error>)> {
    let script = scripts.join(format!("{}.py", bench.name));
    if !script.is_file() {
        bail!(
            "{} does not exist (the PyTorch side of this benchmark)",
            script.display()
        );
    }
    let mut rust = Command::new(bin);
    rust.args([bench.name, "--device", device]);
    let diffuse = run_side("diffuse", &mut rust)?;
    let mut py = Command::new(&pyref.python);
    py.arg(&script)
        .args(["--device", device])
        .env("PYTHONPATH", &pyref.pythonpath);
    Ok(match run_side("PyTorch", &mut py) {
        Ok(torch) => (match_cases(&diffuse, &torch), None),
        Err(e) => (match_cases(&diffuse, &[]), Some(e)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_are_parsed_and_noise_ignored() {
        let out = "warming up\n\
            {\"case\": \"256\", \"ms\": 0.5, \"work\": \"256x256 f32 matmul\"}\n\
            {\"case\": \"512\", \"ms\": 3}\n\
            {\"case\": 7, \"ms\": 1.0}\n\
            {\"case\": \"neg\", \"ms\": -1}\n\
            {not json\n\
            {\"case\": \"256\", \"ms\": 0.25}\n";
        let cases = parse_cases(out);
        assert_eq!(cases.len(), 2);
        assert_eq!(
            cases[0],
            Case {
                case: "256".into(),
                ms: 0.25,
                work: None
            }
        );
        assert_eq!(
            cases[1],
            Case {
                case: "512".into(),
                ms: 3.0,
                work: None
            }
        );
    }

    #[test]
    fn cases_match_by_name_and_ratio_favours_the_faster() {
        let d = parse_cases(
            "{\"case\":\"a\",\"ms\":2.0,\"work\":\"w\"}\n{\"case\":\"only-rust\",\"ms\":1}",
        );
        let t = parse_cases("{\"case\":\"only-py\",\"ms\":5}\n{\"case\":\"a\",\"ms\":3.0}");
        let rows = match_cases(&d, &t);
        let names: Vec<&str> = rows.iter().map(|r| r.case.as_str()).collect();
        assert_eq!(names, ["a", "only-rust", "only-py"]);
        assert_eq!(rows[0].ratio(), Some(1.5));
        assert_eq!(rows[0].work.as_deref(), Some("w"));
        assert_eq!(rows[1].ratio(), None);
        let text = table(&rows);
        assert!(text.contains("| a | 2.000 | 3.000 | 1.50x | w |"), "{text}");
        assert!(text.contains("| only-rust | 1.000 | - | - |  |"), "{text}");
        assert!(text.contains("| only-py | - | 5.000 | - |  |"), "{text}");
    }

    #[test]
    fn ms_formatting() {
        assert_eq!(format_ms(1234.56), "1234.6");
        assert_eq!(format_ms(12.345), "12.35");
        assert_eq!(format_ms(1.23456), "1.235");
        assert_eq!(format_ms(0.012345), "0.0123");
        assert_eq!(format_ratio(Some(0.5)), "0.50x");
        assert_eq!(format_ratio(None), "-");
    }

    fn info() -> RunInfo {
        RunInfo {
            command: "cargo xtask bench matmul --device cpu".into(),
            date: "2026-11-25".into(),
            device: "cpu".into(),
            machine: "AMD EPYC, 2 cores".into(),
            versions: "PyTorch 2.11.0".into(),
        }
    }

    #[test]
    fn section_replacement_keeps_everything_else() {
        let rows = vec![Row {
            case: "a".into(),
            diffuse_ms: Some(1.0),
            torch_ms: Some(2.0),
            work: None,
        }];
        let matmul = section(&lookup("matmul").unwrap(), &info(), &rows);
        let doc = replace_section("", "matmul:cpu", &matmul).unwrap();
        assert!(doc.starts_with("# Benchmarks"));
        let step = section(&lookup("train_step").unwrap(), &info(), &rows);
        let doc = replace_section(&doc, "train_step:cpu", &step).unwrap();
        let doc = doc.replace("# Benchmarks\n", "# Benchmarks\n\nHand-written notes.\n");
        let doc = format!("{doc}\n## Notes\nkeep me\n");
        let faster = vec![Row {
            case: "a".into(),
            diffuse_ms: Some(0.5),
            torch_ms: Some(2.0),
            work: None,
        }];
        let new = replace_section(
            &doc,
            "matmul:cpu",
            &section(&lookup("matmul").unwrap(), &info(), &faster),
        )
        .unwrap();
        assert!(new.contains("| a | 0.500 | 2.000 | 4.00x |"), "{new}");
        assert!(
            !new.contains("| a | 1.000 | 2.000 | 2.00x |\n<!-- bench:matmul:cpu:end"),
            "{new}"
        );
        assert!(
            new.contains("Hand-written notes.") && new.ends_with("## Notes\nkeep me\n"),
            "{new}"
        );
        // The train_step section is untouched, byte for byte.
        let (s, e) = markers("train_step:cpu");
        let slice = |d: &str| d[d.find(&s).unwrap()..d.find(&e).unwrap()].to_owned();
        assert_eq!(slice(&doc), slice(&new));
        assert_eq!(new.matches("<!-- bench:matmul:cpu:start -->").count(), 1);
        // Replacing with identical content is a fixed point.
        let again = replace_section(
            &new,
            "matmul:cpu",
            &section(&lookup("matmul").unwrap(), &info(), &faster),
        )
        .unwrap();
        assert_eq!(again, new);
    }

    #[test]
    fn unterminated_section_is_an_error() {
        let doc = "# Benchmarks\n<!-- bench:matmul:start -->\nhalf\n";
        assert!(replace_section(doc, "matmul", "x").is_err());
    }

    #[test]
    fn registry() {
        assert!(lookup("matmul").is_ok() && lookup("train_step").is_ok());
        assert!(lookup("text").is_ok() && lookup("text_quality").is_ok());
        assert!(lookup("audio").is_ok());
        // Every registered benchmark has its PyTorch side.
        let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench");
        for b in BENCHES {
            assert!(
                scripts.join(format!("{}.py", b.name)).is_file(),
                "{} has no xtask/bench/{}.py",
                b.name,
                b.name
            );
        }
        let err = lookup("nope").unwrap_err().to_string();
        assert!(err.contains("matmul, train_step"), "{err}");
    }
}
