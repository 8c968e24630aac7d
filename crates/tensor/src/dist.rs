//! Data-parallel training across processes on libtorch's own distributed engine, c10d (through
//! the C++ bridge `csrc/dist.cpp`): rendezvous through a `TCPStore` at `MASTER_ADDR:MASTER_PORT`,
//! a Gloo process group on CPU or NCCL on CUDA, and the collectives the training loop needs.
//!
//! Processes find each other through the environment variables `torchrun` sets (`RANK`,
//! `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`; [`DistEnv::from_env`]), so
//! `torchrun --nproc-per-node N --no-python diffuse train ...` works, as does `diffuse launch`.
//! With none of them set, everything runs as one process and nothing here is touched.
//!
//! The process group is process-global ([`init`], [`current`]), like libtorch's generator: one
//! training run per process. The [`crate::train::Trainer`] picks it up (parameters broadcast from
//! rank 0, gradients averaged, only rank 0 writing files) and so does
//! [`crate::data::EpochSampler::new`] (each rank reads its own shard of every global batch).
//! Every collective has a timeout: a rank that dies or never arrives makes the others fail with
//! an error instead of hanging.

use crate::{Error, Result};
use std::ffi::{c_char, c_void, CString};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

extern "C" {
    fn diffuse_dist_store_new(
        host: *const c_char,
        port: i32,
        world_size: i32,
        is_server: i32,
        timeout_ms: i64,
        err: *mut c_char,
        err_len: usize,
    ) -> *mut c_void;
    fn diffuse_dist_store_free(store: *mut c_void);
    fn diffuse_dist_group_new(
        store: *mut c_void,
        backend: i32,
        rank: i32,
        world_size: i32,
        timeout_ms: i64,
        err: *mut c_char,
        err_len: usize,
    ) -> *mut c_void;
    fn diffuse_dist_group_free(group: *mut c_void);
    fn diffuse_dist_allreduce_start(
        group: *mut c_void,
        tensor: *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> *mut c_void;
    fn diffuse_dist_work_wait(work: *mut c_void, err: *mut c_char, err_len: usize) -> i32;
    fn diffuse_dist_broadcast(
        group: *mut c_void,
        tensor: *mut c_void,
        root: i32,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn diffuse_dist_barrier(group: *mut c_void, err: *mut c_char, err_len: usize) -> i32;
}

const ERR_LEN: usize = 2048;

fn err_buf() -> Vec<u8> {
    vec![0u8; ERR_LEN]
}

fn err_text(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).trim().to_string()
}

/// Which collective library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DistBackend {
    /// Gloo: CPU tensors (and CUDA ones through host copies).
    Gloo,
    /// NCCL: CUDA tensors, one GPU per process.
    Nccl,
}

impl DistBackend {
    pub fn name(self) -> &'static str {
        match self {
            DistBackend::Gloo => "gloo",
            DistBackend::Nccl => "nccl",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "gloo" => Ok(DistBackend::Gloo),
            "nccl" => Ok(DistBackend::Nccl),
            other => Err(Error::InvalidArgument(format!(
                "DIFFUSE_DIST_BACKEND: unknown backend {other:?}; expected gloo or nccl"
            ))),
        }
    }

    /// NCCL for CUDA devices, Gloo otherwise (`DIFFUSE_DIST_BACKEND` overrides).
    pub fn for_device(device: Device) -> Result<Self> {
        if let Ok(v) = std::env::var("DIFFUSE_DIST_BACKEND") {
            return Self::parse(v.trim());
        }
        Ok(match device {
            Device::Cuda(_) => DistBackend::Nccl,
            _ => DistBackend::Gloo,
        })
    }
}

/// Where this process sits in a multi-process run, from torchrun's environment variables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistEnv {
    pub rank: usize,
    pub world_size: usize,
    /// Rank among the processes of this machine (selects the GPU).
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
}

impl DistEnv {
    /// `None` when neither `RANK` nor `WORLD_SIZE` is set (a single-process run); an error
    /// naming the variable when the set is incomplete or malformed.
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// [`Self::from_env`] over any variable lookup (for tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let (rank, world) = (get("RANK"), get("WORLD_SIZE"));
        if rank.is_none() && world.is_none() {
            return Ok(None);
        }
        let number = |name: &str, value: Option<String>| -> Result<usize> {
            let value = value.ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{name} is not set, but RANK/WORLD_SIZE are: a multi-process run needs RANK, \
                     WORLD_SIZE, MASTER_ADDR and MASTER_PORT (as torchrun sets them)"
                ))
            })?;
            value.trim().parse::<usize>().map_err(|_| {
                Error::InvalidArgument(format!(
                    "{name}={value:?}: expected a non-negative whole number"
                ))
            })
        };
        let world_size = number("WORLD_SIZE", world)?;
        let rank = number("RANK", rank)?;
        if world_size == 0 {
            return Err(Error::InvalidArgument(
                "WORLD_SIZE=0: expected at least 1 process".into(),
            ));
        }
        if rank >= world_size {
            return Err(Error::InvalidArgument(format!(
                "RANK={rank} is not below WORLD_SIZE={world_size}"
            )));
        }
        let local_rank = match get("LOCAL_RANK") {
            Some(v) => number("LOCAL_RANK", Some(v))?,
            None => rank,
        };
        let master_addr = get("MASTER_ADDR")
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                Error::InvalidArgument(
                    "MASTER_ADDR is not set: the host of rank 0 that every process connects to"
                        .into(),
                )
            })?;
        let port = get("MASTER_PORT").ok_or_else(|| {
            Error::InvalidArgument(
                "MASTER_PORT is not set: the port rank 0 listens on (e.g. 29500)".into(),
            )
        })?;
        let master_port = port
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| {
                Error::InvalidArgument(format!("MASTER_PORT={port:?}: expected a port 1-65535"))
            })?;
        Ok(Some(DistEnv {
            rank,
            world_size,
            local_rank,
            master_addr,
            master_port,
        }))
    }
}

/// The collective timeout: `DIFFUSE_DIST_TIMEOUT` seconds, default 300 (a rendezvous waits this
/// long for every rank; a collective this long for every peer).
pub fn timeout_from_env() -> Result<Duration> {
    match std::env::var("DIFFUSE_DIST_TIMEOUT") {
        Err(_) => Ok(Duration::from_secs(300)),
        Ok(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| *s > 0.0 && s.is_finite())
            .map(Duration::from_secs_f64)
            .ok_or_else(|| {
                Error::InvalidArgument(format!("DIFFUSE_DIST_TIMEOUT={v:?}: expected seconds > 0"))
            }),
    }
}

/// Whether torchrun's agent hosts the rendezvous store (PyTorch's `_create_c10d_store` reads
/// the same variable).
fn agent_store() -> bool {
    std::env::var("TORCHELASTIC_USE_AGENT_STORE").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
}

/// A c10d process group and the store it met through.
pub struct ProcessGroup {
    store: *mut c_void,
    group: *mut c_void,
    rank: usize,
    world_size: usize,
    local_rank: usize,
    backend: DistBackend,
    timeout: Duration,
}

// c10d's process groups are made to be driven from any thread, one collective at a time; the
// training loop issues them from one thread.
unsafe impl Send for ProcessGroup {}
unsafe impl Sync for ProcessGroup {}

impl ProcessGroup {
    /// Rendezvous with the other `env.world_size - 1` processes and build the group. Fails, with
    /// the address and the likely cause, when they do not all arrive within `timeout`.
    pub fn new(env: &DistEnv, backend: DistBackend, timeout: Duration) -> Result<Self> {
        if backend == DistBackend::Nccl && !tch::Cuda::is_available() {
            return Err(Error::Device(
                "the NCCL backend needs CUDA, and no CUDA device is available (use --device cpu, \
                 or DIFFUSE_DIST_BACKEND=gloo)"
                    .into(),
            ));
        }
        let host = CString::new(env.master_addr.clone())
            .map_err(|_| Error::InvalidArgument("MASTER_ADDR contains a NUL byte".into()))?;
        let ms = timeout.as_millis().min(i64::MAX as u128) as i64;
        let where_ = format!("{}:{}", env.master_addr, env.master_port);
        let started = Instant::now();
        let mut err = err_buf();
        let store = unsafe {
            diffuse_dist_store_new(
                host.as_ptr(),
                env.master_port as i32,
                env.world_size as i32,
                // Under torchrun the agent already serves the store on MASTER_PORT
                // (TORCHELASTIC_USE_AGENT_STORE), and every rank joins it as a client.
                (env.rank == 0 && !agent_store()) as i32,
                ms,
                err.as_mut_ptr().cast(),
                ERR_LEN,
            )
        };
        if store.is_null() {
            let cause = err_text(&err);
            let hint = if env.rank == 0 {
                format!(
                    "rank 0 listens on {where_} and waits for WORLD_SIZE - 1 = {} more processes; \
                     are all {} started, with the same MASTER_ADDR/MASTER_PORT?",
                    env.world_size - 1,
                    env.world_size
                )
            } else {
                format!(
                    "rank {} could not reach rank 0 at {where_} (is MASTER_ADDR right and rank 0 \
                     running?)",
                    env.rank
                )
            };
            return Err(Error::Device(format!(
                "distributed rendezvous failed after {:.0} s: {hint} ({cause})",
                started.elapsed().as_secs_f64()
            )));
        }
        let mut err = err_buf();
        let group = unsafe {
            diffuse_dist_group_new(
                store,
                match backend {
                    DistBackend::Gloo => 0,
                    DistBackend::Nccl => 1,
                },
                env.rank as i32,
                env.world_size as i32,
                ms,
                err.as_mut_ptr().cast(),
                ERR_LEN,
            )
        };
        if group.is_null() {
            unsafe { diffuse_dist_store_free(store) };
            return Err(Error::Device(format!(
                "creating the {} process group (rank {} of {}) failed: {}",
                backend.name(),
                env.rank,
                env.world_size,
                err_text(&err)
            )));
        }
        tracing::info!(
            rank = env.rank,
            world_size = env.world_size,
            backend = backend.name(),
            master = %where_,
            "joined the process group"
        );
        Ok(ProcessGroup {
            store,
            group,
            rank: env.rank,
            world_size: env.world_size,
            local_rank: env.local_rank,
            backend,
            timeout,
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }
    pub fn world_size(&self) -> usize {
        self.world_size
    }
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }
    pub fn backend(&self) -> DistBackend {
        self.backend
    }
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn failed(&self, what: &str, cause: String) -> Error {
        Error::Device(format!(
            "{what} failed on rank {} of {} ({}; a peer process may have exited or stalled \
             past the {:.0} s timeout)",
            self.rank,
            self.world_size,
            cause,
            self.timeout.as_secs_f64()
        ))
    }

    /// Start summing `tensor` (contiguous) over all ranks, in place; finish with
    /// [`PendingReduce::wait`].
    pub fn all_reduce_sum_start(&self, tensor: &mut Tensor) -> Result<PendingReduce<'_>> {
        let mut err = err_buf();
        let work = unsafe {
            diffuse_dist_allreduce_start(
                self.group,
                tensor.as_mut_ptr().cast(),
                err.as_mut_ptr().cast(),
                ERR_LEN,
            )
        };
        if work.is_null() {
            return Err(self.failed("all-reduce", err_text(&err)));
        }
        Ok(PendingReduce { group: self, work })
    }

    /// Sum `tensor` over all ranks, in place.
    pub fn all_reduce_sum(&self, tensor: &mut Tensor) -> Result<()> {
        self.all_reduce_sum_start(tensor)?.wait()
    }

    /// Overwrite `tensor` on every rank with rank `root`'s.
    pub fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<()> {
        let mut err = err_buf();
        let rc = unsafe {
            diffuse_dist_broadcast(
                self.group,
                tensor.as_mut_ptr().cast(),
                root as i32,
                err.as_mut_ptr().cast(),
                ERR_LEN,
            )
        };
        if rc != 0 {
            return Err(self.failed("broadcast", err_text(&err)));
        }
        Ok(())
    }

    /// Wait until every rank gets here.
    pub fn barrier(&self) -> Result<()> {
        let mut err = err_buf();
        let rc = unsafe { diffuse_dist_barrier(self.group, err.as_mut_ptr().cast(), ERR_LEN) };
        if rc != 0 {
            return Err(self.failed("barrier", err_text(&err)));
        }
        Ok(())
    }

    /// Rank 0's `data` on every rank (other ranks pass `None`): configs, file contents.
    pub fn broadcast_bytes(&self, data: Option<Vec<u8>>) -> Result<Vec<u8>> {
        let device = self.collective_device();
        let len = data.as_ref().map_or(0, Vec::len);
        let len = self.all_reduce_values(&[if self.is_main() { len as f64 } else { 0.0 }])?[0];
        let mut buf = match data {
            Some(d) if self.is_main() => Tensor::from_slice(&d),
            _ => Tensor::zeros([len as i64], (Kind::Uint8, Device::Cpu)),
        }
        .to_device(device);
        self.broadcast(&mut buf, 0)?;
        Ok(Vec::<u8>::try_from(buf.to_device(Device::Cpu)).expect("bytes"))
    }

    /// Sum f64 values over all ranks (losses, counters).
    pub fn all_reduce_values(&self, values: &[f64]) -> Result<Vec<f64>> {
        let device = self.collective_device();
        let mut t = Tensor::from_slice(values).to_device(device);
        self.all_reduce_sum(&mut t)?;
        Ok(Vec::<f64>::try_from(t.to_device(Device::Cpu)).expect("f64 values"))
    }

    /// The device this group's collectives take tensors on.
    pub fn collective_device(&self) -> Device {
        match self.backend {
            DistBackend::Gloo => Device::Cpu,
            DistBackend::Nccl => Device::Cuda(self.local_rank),
        }
    }

    /// Broadcast every tensor in `tensors` from rank 0, in buckets of about `bucket_bytes`.
    pub fn broadcast_tensors(&self, tensors: &mut [Tensor], bucket_bytes: usize) -> Result<()> {
        for bucket in buckets(tensors, bucket_bytes) {
            let mut flat = self.flatten(&tensors[bucket.clone()]);
            self.broadcast(&mut flat, 0)?;
            self.unflatten(&flat, &mut tensors[bucket]);
        }
        Ok(())
    }

    /// Replace every tensor by its mean over the ranks, in buckets of about `bucket_bytes`; the
    /// next bucket is flattened while the previous one is on the wire.
    pub fn average_tensors(&self, tensors: &mut [Tensor], bucket_bytes: usize) -> Result<()> {
        let scale = 1.0 / self.world_size as f64;
        let mut pending: Option<(std::ops::Range<usize>, Tensor, PendingReduce<'_>)> = None;
        for bucket in buckets(tensors, bucket_bytes) {
            let mut flat = self.flatten(&tensors[bucket.clone()]);
            let work = self.all_reduce_sum_start(&mut flat)?;
            if let Some((range, done, w)) = pending.take() {
                w.wait()?;
                self.unflatten(&(done * scale), &mut tensors[range]);
            }
            pending = Some((bucket, flat, work));
        }
        if let Some((range, done, w)) = pending {
            w.wait()?;
            self.unflatten(&(done * scale), &mut tensors[range]);
        }
        Ok(())
    }

    fn flatten(&self, tensors: &[Tensor]) -> Tensor {
        let device = self.collective_device();
        let parts: Vec<Tensor> = tensors
            .iter()
            .map(|t| {
                t.detach()
                    .to_kind(Kind::Float)
                    .to_device(device)
                    .reshape([-1])
            })
            .collect();
        Tensor::cat(&parts, 0)
    }

    fn unflatten(&self, flat: &Tensor, tensors: &mut [Tensor]) {
        let mut offset = 0;
        for t in tensors.iter_mut() {
            let n = t.numel() as i64;
            let part = flat
                .narrow(0, offset, n)
                .reshape(t.size())
                .to_kind(t.kind())
                .to_device(t.device());
            tch::no_grad(|| t.copy_(&part));
            offset += n;
        }
    }
}

/// Consecutive ranges of `tensors` holding about `bucket_bytes` (f32) each.
fn buckets(tensors: &[Tensor], bucket_bytes: usize) -> Vec<std::ops::Range<usize>> {
    let limit = (bucket_bytes / 4).max(1) as i64;
    let mut out = Vec::new();
    let (mut start, mut size) = (0usize, 0i64);
    for (i, t) in tensors.iter().enumerate() {
        if size > 0 && size + t.numel() as i64 > limit {
            out.push(start..i);
            start = i;
            size = 0;
        }
        size += t.numel() as i64;
    }
    if start < tensors.len() {
        out.push(start..tensors.len());
    }
    out
}

/// An all-reduce on the wire.
pub struct PendingReduce<'a> {
    group: &'a ProcessGroup,
    work: *mut c_void,
}

impl PendingReduce<'_> {
    pub fn wait(self) -> Result<()> {
        let mut err = err_buf();
        let rc = unsafe { diffuse_dist_work_wait(self.work, err.as_mut_ptr().cast(), ERR_LEN) };
        let group = self.group;
        std::mem::forget(self);
        if rc != 0 {
            return Err(group.failed("all-reduce", err_text(&err)));
        }
        Ok(())
    }
}

impl Drop for PendingReduce<'_> {
    fn drop(&mut self) {
        // Not waited on (an error elsewhere): wait to free the handle, ignoring the outcome.
        let mut err = err_buf();
        unsafe { diffuse_dist_work_wait(self.work, err.as_mut_ptr().cast(), ERR_LEN) };
        let _ = self.group;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        unsafe {
            diffuse_dist_group_free(self.group);
            diffuse_dist_store_free(self.store);
        }
    }
}

static GROUP: OnceLock<ProcessGroup> = OnceLock::new();
static ENV: OnceLock<DistEnv> = OnceLock::new();

/// Join the process group the environment describes, once per process (`None`: a
/// single-process run). Later calls return the same group.
pub fn init(backend: DistBackend, timeout: Duration) -> Result<Option<&'static ProcessGroup>> {
    if let Some(g) = GROUP.get() {
        return Ok(Some(g));
    }
    let Some(env) = DistEnv::from_env()? else {
        return Ok(None);
    };
    let _ = ENV.set(env.clone());
    let group = ProcessGroup::new(&env, backend, timeout)?;
    Ok(Some(GROUP.get_or_init(|| group)))
}

/// Use `group` as this process's group (tests build groups by hand). Fails if one is set.
pub fn set_current(group: ProcessGroup) -> Result<&'static ProcessGroup> {
    GROUP
        .set(group)
        .map_err(|_| Error::InvalidArgument("a process group is already set".into()))?;
    Ok(GROUP.get().expect("just set"))
}

/// The process group of this process, when it is part of a multi-process run.
pub fn current() -> Option<&'static ProcessGroup> {
    GROUP.get()
}

/// The environment the group came from.
pub fn current_env() -> Option<&'static DistEnv> {
    ENV.get()
}

/// Whether this process writes the run's files: rank 0, or the only process.
pub fn is_main() -> bool {
    current().is_none_or(|g| g.is_main())
}
