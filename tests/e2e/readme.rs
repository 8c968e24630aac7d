//! The README's commands, run as written: every `diffuse ...` line of its `sh` blocks (and the
//! `cargo run -p diffuse-cli -- ...` ones, which are the same binary), in order, in a fresh folder
//! that looks like a checkout of the repository to them: the bundled models copied into
//! `data/models`, the named datasets (`mnist`, `shakespeare`, `drums`, ...) standing in as the
//! repository's small fixtures through `DIFFUSE_DATA_DIR`, and the files a user is assumed to
//! have (`path/to/pictures`, `digit.png`, `hit.wav`, `bag_of_words.npy`, ...) made from fixtures.
//!
//! Only sizes are changed, by flags: training steps, sample counts, sampler steps and evaluation
//! sizes are cut so the whole README runs in a few minutes (see [`shorten`]). A README line that
//! stops working, or writes into a bundled model, fails this test with the line quoted.

use diffuse_e2e::{diffuse_bin, repo_root};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Split a shell line into words: single and double quotes group, backslash escapes in double
/// quotes and outside, an unquoted `#` after whitespace starts a comment.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    word.push(q);
                }
            }
            '"' => {
                in_word = true;
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' => word.extend(chars.next()),
                        _ => word.push(q),
                    }
                }
            }
            '\\' => {
                in_word = true;
                word.extend(chars.next());
            }
            '#' if !in_word => break,
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// The `diffuse` command lines of the README's `sh` blocks, as argument lists, in order.
/// `cargo run [--release] -p diffuse-cli -- ARGS` counts as `diffuse ARGS`. Lines with a `...`
/// placeholder (a command only sketched) and commands of other programs are left out.
fn readme_commands(readme: &str) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    let mut in_sh = false;
    for line in readme.lines() {
        let trimmed = line.trim();
        if let Some(fence) = trimmed.strip_prefix("```") {
            in_sh = !in_sh && fence.trim() == "sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let words = shell_words(trimmed);
        let args: Vec<String> = match words.first().map(String::as_str) {
            Some("diffuse") => words[1..].to_vec(),
            Some("cargo")
                if words.iter().any(|w| w == "diffuse-cli")
                    && !words.iter().any(|w| w == "--example") =>
            {
                match words.iter().position(|w| w == "--") {
                    Some(i) => words[i + 1..].to_vec(),
                    None => continue,
                }
            }
            _ => continue,
        };
        if args.is_empty() || args.iter().any(|a| a == "...") {
            continue;
        }
        commands.push(args);
    }
    commands
}

/// The value after `flag`, if present.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// Set `flag` to `value`, appending it when absent.
fn set_flag(args: &mut Vec<String>, flag: &str, value: String) {
    match args.iter().position(|a| a == flag) {
        Some(i) if i + 1 < args.len() => args[i + 1] = value,
        _ => args.extend([flag.to_owned(), value]),
    }
}

/// Cut a README command down to seconds without changing what it does: training runs a handful
/// of steps (more steps stay more: a resume that extends a run still extends it), sampling makes a
/// few items in a few sampler steps, evaluations use a few samples and held-out items.
fn shorten(args: &[String]) -> Vec<String> {
    let args = args.to_vec();
    // `launch ... -- train ...`: the training command is after `--`.
    let start = args.iter().position(|a| a == "--").map_or(0, |i| i + 1);
    let (head, mut tail) = (args[..start].to_vec(), args[start..].to_vec());
    let verb = tail.first().cloned().unwrap_or_default();
    let kind = tail.get(1).cloned().unwrap_or_default();
    let cap = |args: &mut Vec<String>, flag: &str, most: f64| {
        if let Some(v) = flag_value(args, flag).and_then(|v| v.parse::<f64>().ok()) {
            if v > most {
                set_flag(args, flag, most.to_string());
            }
        }
    };
    match verb.as_str() {
        "train" => {
            let resume = tail.iter().any(|a| a == "--resume");
            match flag_value(&tail, "--steps").and_then(|v| v.parse::<u64>().ok()) {
                // 2500 -> 2, 4000 -> 4, 8000 -> 5: monotone, so extensions still extend.
                Some(steps) => {
                    set_flag(&mut tail, "--steps", (steps / 1000).clamp(2, 5).to_string())
                }
                None if !resume
                    && kind != "classifier"
                    && !tail.iter().any(|a| a == "--epochs") =>
                {
                    set_flag(&mut tail, "--steps", "2".into());
                }
                None => {}
            }
            if kind == "classifier" {
                set_flag(&mut tail, "--steps", "2".into());
            }
            cap(&mut tail, "--epochs", 1.0);
            // Small batches: a DiffWave step on 16 stereo seconds takes half a minute here.
            if flag_value(&tail, "--batch-size").is_none() {
                set_flag(&mut tail, "--batch-size", "4".into());
            }
        }
        "sample" | "inpaint" | "eval" => {
            // An image evaluation asks a class-conditional model for every class, and needs an
            // image of each (ten here).
            let images = if verb == "eval" && kind == "image" {
                10.0
            } else {
                4.0
            };
            cap(&mut tail, "--num", images);
            cap(&mut tail, "--steps", 4.0);
            cap(&mut tail, "--resample", 2.0);
            cap(&mut tail, "--limit", 2.0);
            if (kind == "audio" || kind == "text")
                && verb != "eval"
                && flag_value(&tail, "--steps").is_none()
            {
                // The drums model's own scheduler is DDPM's 200 steps; MDLM takes a step per
                // position of each window.
                set_flag(&mut tail, "--steps", "4".into());
            }
            // Still past a 128-token context, so the sliding windows are exercised.
            cap(&mut tail, "--length", 160.0);
            if verb == "eval" {
                // Evaluations default to hundreds of samples, every held-out item, or a
                // sampler's full step count; each takes these flags.
                let sizes: &[(&str, &str)] = match kind.as_str() {
                    "image" => &[("--num", "10"), ("--limit", "2"), ("--steps", "4")],
                    "audio" => &[("--num", "2"), ("--steps", "4")],
                    "text" => &[("--limit", "2")],
                    "counts" => &[("--num", "50"), ("--limit", "2"), ("--steps", "4")],
                    _ => &[],
                };
                for (flag, value) in sizes {
                    if flag_value(&tail, flag).is_none() {
                        set_flag(&mut tail, flag, (*value).to_owned());
                    }
                }
            }
        }
        _ => {}
    }
    head.into_iter().chain(tail).collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Every file under `dir` with its bytes, sorted, to see that nothing changed.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// The folder the README's commands run in, with what they expect a user to have.
fn workspace(root: &Path) -> PathBuf {
    let repo = repo_root();
    let fixtures = repo.join("data/fixtures");
    // Bundled models, copied: a command that writes into them shows up in the snapshot, and the
    // repository's own copies are never at risk.
    copy_dir(&repo.join("data/models"), &root.join("data/models"));
    copy_dir(&fixtures.join("counts"), &root.join("data/fixtures/counts"));
    // Named datasets: the fixtures in their place.
    let datasets = root.join("datasets");
    let text_corpus = repo.join("crates/text/tests/fixtures/corpus");
    for (name, from) in [
        ("mnist", fixtures.join("mnist-subset")),
        ("fashion-mnist", fixtures.join("mnist-subset")),
    ] {
        copy_dir(&from, &datasets.join(name));
    }
    // Text: the fixture corpus is 5 kB; twenty documents of it (and of the README) give the
    // held-out split enough tokens for a context even with a BPE tokenizer.
    // The README itself joins it, so every character its prompts use is in a character vocabulary.
    let corpus = [
        std::fs::read_to_string(text_corpus.join("sonnets.txt")).unwrap(),
        std::fs::read_to_string(text_corpus.join("more/hamlet.txt")).unwrap(),
        std::fs::read_to_string(repo.join("README.md")).unwrap(),
    ]
    .concat();
    // The texts keep to Shakespeare's characters (the bundled models' vocabulary), so commands
    // that train a bundled model, or a model trained on Shakespeare, further on them read them as
    // they read the real works.
    let tokenizer: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo.join("data/models/shakespeare/tokenizer.json")).unwrap(),
    )
    .unwrap();
    let vocab = tokenizer["model"]["vocab"].as_object().unwrap();
    let shakespeare: String = corpus
        .chars()
        .filter(|c| vocab.contains_key(c.to_string().as_str()))
        .collect();
    for folder in [datasets.join("shakespeare"), root.join("my-texts")] {
        std::fs::create_dir_all(&folder).unwrap();
        for i in 0..20 {
            std::fs::write(folder.join(format!("part-{i:02}.txt")), &shakespeare).unwrap();
        }
    }
    // Audio: four copies of the ten spoken digits, so the held-out split has the four clips
    // `eval audio` needs. Two of the drums stand-in's folders are named after the kits that
    // `train audio --data drums` holds out by default.
    for (name, folders) in [
        ("drums", ["Audiophob", "BJA_Pacific", "take-2", "take-3"]),
        ("speech", ["take-0", "take-1", "take-2", "take-3"]),
    ] {
        for folder in folders {
            copy_dir(
                &fixtures.join("speech-digits"),
                &datasets.join(name).join(folder),
            );
        }
    }
    // A user's own files.
    copy_dir(&fixtures.join("speech-digits"), &root.join("path/to/wavs"));
    std::fs::copy(
        fixtures.join("counts/nbinom-mixture.npy"),
        root.join("bag_of_words.npy"),
    )
    .unwrap();
    std::fs::copy(
        fixtures.join("counts/nbinom-mixture.csv"),
        root.join("other.csv"),
    )
    .unwrap();
    std::fs::copy(fixtures.join("speech-digits/0.wav"), root.join("hit.wav")).unwrap();
    std::fs::copy(
        repo.join("data/models/mnist-classifier/model.safetensors"),
        root.join("model.safetensors"),
    )
    .unwrap();
    let pictures = root.join("path/to/pictures");
    std::fs::create_dir_all(&pictures).unwrap();
    for i in 0..6u32 {
        let img = image::RgbImage::from_fn(40, 40, |x, y| {
            image::Rgb([(x * 6 + i * 20) as u8, (y * 6) as u8, ((x + y) * 3) as u8])
        });
        img.save(pictures.join(format!("p{i}.png"))).unwrap();
    }
    // A digit to inpaint and a mask (white = keep, black = generate).
    let digit = image::GrayImage::from_fn(28, 28, |x, y| {
        let d = (x as i32 - 14).pow(2) + (y as i32 - 14).pow(2);
        image::Luma([if (36..=64).contains(&d) { 255 } else { 0 }])
    });
    digit.save(root.join("digit.png")).unwrap();
    let mask =
        image::GrayImage::from_fn(28, 28, |x, _| image::Luma([if x < 14 { 255 } else { 0 }]));
    mask.save(root.join("mask.png")).unwrap();
    datasets
}

#[test]
fn shell_words_follow_the_shell() {
    assert_eq!(
        shell_words(r#"diffuse sample text --prompt "ROMEO:" --infill 'a _ b'   # comment"#),
        ["diffuse", "sample", "text", "--prompt", "ROMEO:", "--infill", "a _ b"]
    );
    assert_eq!(shell_words("a#b c"), ["a#b", "c"]);
    let readme = "```sh\ndiffuse a\ncargo run --release -p diffuse-cli -- doctor\n```\n```rust\ndiffuse b\n```\n";
    assert_eq!(
        readme_commands(readme),
        [vec!["a".to_owned()], vec!["doctor".to_owned()]]
    );
    let train = |s: &str| shorten(&shell_words(s));
    assert_eq!(
        train("train image --out r --resume --steps 8000"),
        shell_words("train image --out r --resume --steps 5 --batch-size 4")
    );
    assert_eq!(
        train("launch --nproc 2 -- train image --data mnist"),
        shell_words("launch --nproc 2 -- train image --data mnist --steps 2 --batch-size 4")
    );
}

#[test]
fn every_readme_command_runs_as_written() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let commands = readme_commands(&readme);
    assert!(
        commands.len() > 40,
        "only {} commands found",
        commands.len()
    );
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let datasets = workspace(root);
    let bundled = snapshot(&root.join("data/models"));
    for args in &commands {
        let run = shorten(args);
        let started = std::time::Instant::now();
        let out = Command::new(diffuse_bin())
            .args(&run)
            .current_dir(root)
            .env("DIFFUSE_DATA_DIR", &datasets)
            .env("OMP_NUM_THREADS", "1")
            .env_remove("RUST_LOG")
            .output()
            .expect("running diffuse");
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!(
            "readme: diffuse {} ({:.1} s)",
            run.join(" "),
            started.elapsed().as_secs_f64()
        );
        assert!(
            out.status.success(),
            "README line `diffuse {}` (run as `diffuse {}`) failed:\n{stderr}",
            args.join(" "),
            run.join(" ")
        );
        assert!(
            !stderr.contains('\u{1b}'),
            "colour codes in piped output of `diffuse {}`",
            args.join(" ")
        );
    }
    assert!(
        snapshot(&root.join("data/models")) == bundled,
        "a README command changed a bundled model in data/models"
    );
}
