//! Process-wide settings that make libtorch run at full speed from Rust.
//!
//! libtorch's CPU threads are OpenMP's (libgomp), which spin for a while at every barrier before
//! sleeping. On an idle machine that is the fastest wait; beside a busy process on a 2-core machine
//! it is ruinous, because the spinning thread holds the core the thread it waits for needs (4x
//! slower sampling in BENCHMARKS.md's `threads`, 9x for audio in one report). A passive wait costs
//! 1.8x on an idle machine, so neither policy is right for both; [`adapt_threads`] instead counts the
//! cores other processes keep busy when a command starts and leaves libtorch only the free ones.
//!
//! glibc's malloc hands blocks above its mmap threshold (128 KiB at start, adjusted as the program
//! runs) straight to mmap and returns them on free, so a loop that allocates and frees
//! megabyte-sized tensors every step pays page faults on every allocation. Measured on the
//! sampler-quality benchmark (batch 2000 through a small MLP): 4.4 ms per model call with the
//! default, 2.0 ms with a fixed 64 MiB threshold — the same as PyTorch in Python, whose own
//! allocation pattern happens to raise the threshold early.

/// Keep tensor buffers up to 64 MiB in the heap and trim it only above 256 MiB (Linux/glibc; a
/// no-op elsewhere). Call once at program start, before heavy tensor work; the binaries do.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

/// Die quietly on a closed pipe, as other command-line tools do (`diffuse inspect f | head`):
/// Rust ignores SIGPIPE, so printing to a closed pipe would otherwise panic with a backtrace.
/// Unix only; call once at program start, the binaries do.
pub fn default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: restoring a signal's default disposition has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// How [`adapt_threads`] set libtorch's threads.
#[derive(Clone, Debug, PartialEq)]
pub enum Threads {
    /// The user chose (`OMP_NUM_THREADS`): left alone.
    Chosen,
    /// Every core was free: libtorch's default, one thread per core.
    AllCores(usize),
    /// Other processes kept this many cores busy: libtorch got the rest (at least one).
    Adapted { busy_cores: usize, threads: usize },
}

/// Cores busy in the whole machine over `window`, from /proc/stat (Linux; `None` elsewhere).
fn busy_cores(window: std::time::Duration) -> Option<f64> {
    fn read() -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal ...
        let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
        let total: u64 = v.iter().take(8).sum();
        Some((total, idle))
    }
    let (t0, i0) = read()?;
    std::thread::sleep(window);
    let (t1, i1) = read()?;
    let (dt, di) = (t1.checked_sub(t0)?, i1.checked_sub(i0)?);
    if dt == 0 {
        return None;
    }
    let cores = std::thread::available_parallelism().ok()?.get() as f64;
    Some(cores * (dt - di.min(dt)) as f64 / dt as f64)
}

/// Give libtorch one thread per core that no other process is using, measured over 50 ms as the
/// command starts: a machine running another training gets a one-thread sampler that runs at
/// full speed instead of one spinning against its neighbour. `OMP_NUM_THREADS` set by the user is
/// respected. Call once at program start, before tensor work; the `diffuse` binary does.
pub fn adapt_threads() -> Threads {
    let choice = choose_threads();
    if let Threads::Adapted { threads, .. } = choice {
        tch::set_num_threads(threads as i32);
    }
    let _ = THREADS.set(choice.clone());
    choice
}

/// What [`adapt_threads`] decided in this process (`None` if it was not called).
pub fn threads_choice() -> Option<&'static Threads> {
    THREADS.get()
}

static THREADS: std::sync::OnceLock<Threads> = std::sync::OnceLock::new();

fn choose_threads() -> Threads {
    if std::env::var_os("OMP_NUM_THREADS").is_some_and(|v| !v.is_empty()) {
        return Threads::Chosen;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    match busy_cores(std::time::Duration::from_millis(50)) {
        Some(busy) => threads_for(cores, busy),
        None => Threads::AllCores(cores),
    }
}

/// The rule: a core counts as taken when other processes used more than half of it; libtorch
/// gets the others, and always at least one.
fn threads_for(cores: usize, busy: f64) -> Threads {
    let busy_cores = (busy.max(0.0).round() as usize).min(cores);
    if busy_cores == 0 {
        return Threads::AllCores(cores);
    }
    Threads::Adapted {
        busy_cores,
        threads: (cores - busy_cores).max(1),
    }
}

impl std::fmt::Display for Threads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Threads::Chosen => write!(f, "OMP_NUM_THREADS set"),
            Threads::AllCores(n) => write!(f, "all {n} cores free"),
            Threads::Adapted { busy_cores, .. } => write!(
                f,
                "{busy_cores} core{} busy with other work at start",
                if *busy_cores == 1 { "" } else { "s" }
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{threads_for, Threads};

    #[test]
    fn threads_are_the_cores_others_leave_free() {
        assert_eq!(threads_for(2, 0.1), Threads::AllCores(2));
        let one_busy = Threads::Adapted {
            busy_cores: 1,
            threads: 1,
        };
        assert_eq!(threads_for(2, 0.9), one_busy);
        assert_eq!(
            threads_for(2, 2.0),
            Threads::Adapted {
                busy_cores: 2,
                threads: 1
            }
        );
        assert_eq!(
            threads_for(16, 3.4),
            Threads::Adapted {
                busy_cores: 3,
                threads: 13
            }
        );
        assert_eq!(threads_for(4, -0.5), Threads::AllCores(4));
    }

    #[test]
    fn busy_cores_are_measured_on_linux() {
        if cfg!(target_os = "linux") {
            let busy = super::busy_cores(std::time::Duration::from_millis(20)).unwrap();
            let cores = std::thread::available_parallelism().unwrap().get() as f64;
            assert!((0.0..=cores + 1e-9).contains(&busy), "{busy}");
        }
    }
}
