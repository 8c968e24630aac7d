//! `diffuse launch --nproc N -- train ...`: start N copies of this binary as the ranks of one
//! data-parallel training run on this machine (or this machine's share of a multi-machine run),
//! setting the variables torchrun sets (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
//! MASTER_ADDR, MASTER_PORT), for machines without Python. If any rank fails, the others are
//! stopped and the launch fails with that rank's exit status.
//!
//! A mistyped training command is refused once, before any rank starts; a rank's error line is
//! handed to launch (through the file named by [`ERROR_FILE_VAR`]) rather than printed, so a
//! mistake every rank makes is printed once, not once per rank.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

#[derive(Args, Debug)]
pub struct LaunchArgs {
    /// Processes on this machine (one per GPU for CUDA training).
    #[arg(long, default_value_t = 1)]
    pub nproc: usize,
    /// Machines taking part; each runs this command with its own --node-rank.
    #[arg(long, default_value_t = 1)]
    pub nnodes: usize,
    /// This machine's index, 0..nnodes (node 0 hosts rank 0, which the others connect to).
    #[arg(long, default_value_t = 0)]
    pub node_rank: usize,
    /// Host of node 0, reachable from every machine.
    #[arg(long, default_value = "127.0.0.1")]
    pub master_addr: String,
    /// Port rank 0 listens on (default: a free port when --nnodes is 1, else 29500).
    #[arg(long)]
    pub master_port: Option<u16>,
    /// The command every rank runs: `train ...`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// The variable naming the file a rank writes its one-line error to, for launch to print.
pub const ERROR_FILE_VAR: &str = "DIFFUSE_ERROR_FILE";

/// A port nobody listens on now (the OS picks it), for single-machine runs.
fn free_port() -> Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port for rank 0")?;
    Ok(listener.local_addr()?.port())
}

/// The signal (SIGINT or SIGTERM) that asked launch to stop, 0 while none has.
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn remember_signal(signal: libc::c_int) {
    STOP_SIGNAL.store(signal, Ordering::SeqCst);
}

/// Stop requests to launch reach its ranks (as torchrun forwards them): otherwise a `kill`
/// of launch alone leaves the ranks training as orphans.
fn forward_stop_signals() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(
                signal,
                remember_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
    }
}

fn describe(status: ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exit status {code}"),
        None => "a signal".into(),
    }
}

/// Run the ranks. `check_command` parses the training command as the ranks will, so a mistyped
/// one is refused here, once, with clap's usual message.
pub fn launch(
    args: LaunchArgs,
    check_command: impl FnOnce(&[String]) -> Result<(), clap::Error>,
) -> Result<()> {
    if args.nproc == 0 {
        bail!("--nproc: must be at least 1");
    }
    if args.nnodes == 0 {
        bail!("--nnodes: must be at least 1");
    }
    if args.node_rank >= args.nnodes {
        bail!(
            "--node-rank: {} is not below --nnodes {}",
            args.node_rank,
            args.nnodes
        );
    }
    if args.command.first().map(String::as_str) != Some("train") {
        bail!(
            "launch runs a training command on every rank: `diffuse launch --nproc N -- train \
             image|text|audio|counts ...` (got `{}`)",
            args.command.join(" ")
        );
    }
    if std::env::var_os("RANK").is_some() || std::env::var_os("WORLD_SIZE").is_some() {
        bail!("launch: RANK/WORLD_SIZE are already set; launch is not nested inside torchrun or another launch");
    }
    if let Err(e) = check_command(&args.command) {
        e.exit();
    }
    let port = match args.master_port {
        Some(0) => bail!("--master-port: expected a port 1-65535"),
        Some(p) => p,
        None if args.nnodes == 1 => free_port()?,
        None => 29500,
    };
    let world = args.nproc * args.nnodes;
    let exe = std::env::current_exe().context("finding the diffuse binary")?;
    let errors = ErrorFiles::new()?;
    forward_stop_signals();
    let mut children: Vec<(usize, Child)> = Vec::with_capacity(args.nproc);
    for local in 0..args.nproc {
        let rank = args.node_rank * args.nproc + local;
        let child = Command::new(&exe)
            .args(&args.command)
            .env(ERROR_FILE_VAR, errors.path(rank))
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_WORLD_SIZE", args.nproc.to_string())
            .env("GROUP_RANK", args.node_rank.to_string())
            .env("MASTER_ADDR", &args.master_addr)
            .env("MASTER_PORT", port.to_string())
            .spawn()
            .with_context(|| format!("starting rank {rank}"))?;
        children.push((rank, child));
    }
    tracing::info!(
        ranks = args.nproc,
        world_size = world,
        master = %format!("{}:{port}", args.master_addr),
        "launched"
    );
    // Wait for all; the first failure stops the rest.
    let mut failure: Option<(usize, ExitStatus)> = None;
    let mut forwarded = 0;
    while !children.is_empty() {
        let signal = STOP_SIGNAL.load(Ordering::SeqCst);
        if signal != 0 && forwarded == 0 {
            forwarded = signal;
            for (_, c) in &children {
                // SAFETY: kill(2) on our own child's pid.
                unsafe {
                    libc::kill(c.id() as libc::pid_t, signal);
                }
            }
        }
        let mut i = 0;
        while i < children.len() {
            match children[i].1.try_wait()? {
                Some(status) => {
                    let (rank, _) = children.remove(i);
                    if !status.success() && failure.is_none() {
                        failure = Some((rank, status));
                        for (_, c) in &mut children {
                            let _ = c.kill();
                        }
                    }
                }
                None => i += 1,
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if forwarded != 0 {
        bail!(
            "launch: stopped by signal {forwarded}, passed on to the ranks (resume the run with \
             --resume)"
        );
    }
    if let Some((rank, status)) = failure {
        // The first rank to fail holds the cause (the others' errors, if any, are mostly its
        // echo: a closed connection); its own line is the launch's error. Different errors of
        // other ranks are listed too, each once.
        let first = errors.read(rank);
        let others: Vec<(usize, String)> = (0..args.nproc)
            .map(|local| args.node_rank * args.nproc + local)
            .filter(|&r| r != rank)
            .filter_map(|r| errors.read(r).map(|e| (r, e)))
            .collect();
        let mut shown: Vec<&str> = first.iter().map(String::as_str).collect();
        for (r, error) in &others {
            if !shown.contains(&error.as_str()) {
                shown.push(error);
                eprintln!("rank {r}: {error}");
            }
        }
        match first {
            Some(error) => bail!(
                "{}",
                error.strip_prefix("error: ").unwrap_or(&error).to_owned()
            ),
            None => bail!(
                "rank {rank} of {world} failed ({}); the other ranks on this machine were stopped",
                describe(status)
            ),
        }
    }
    Ok(())
}

/// A private folder of per-rank error files, removed when launch ends.
struct ErrorFiles {
    dir: std::path::PathBuf,
}

impl ErrorFiles {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("diffuse-launch-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("making {} for the ranks' errors", dir.display()))?;
        Ok(Self { dir })
    }

    fn path(&self, rank: usize) -> std::path::PathBuf {
        self.dir.join(format!("rank-{rank}.err"))
    }

    /// The error line rank `rank` left, if any.
    fn read(&self, rank: usize) -> Option<String> {
        std::fs::read_to_string(self.path(rank))
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
    }
}

impl Drop for ErrorFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
