//! Resumable data order: which examples a step trains on is a pure function of (seed, step),
//! so a resumed run sees exactly the batches the uninterrupted run would have seen. Also how a
//! `--data` argument is recorded in a run, so the run can be resumed from anywhere.

/// Shuffled mini-batches over `len` examples: each epoch is a fresh permutation drawn from
/// (seed, epoch); batches run across epoch boundaries so every step has a full batch.
#[derive(Clone, Debug)]
pub struct EpochSampler {
    len: usize,
    batch_size: usize,
    seed: u64,
    /// This process's share of the data: (rank, world size). Rank r takes positions r, r+W, ...
    shard: (usize, usize),
}

impl EpochSampler {
    /// Panics if `len` or `batch_size` is zero (a programming error; validate user input first).
    /// In a multi-process run ([`crate::dist::current`]) the sampler is this rank's shard: the
    /// global batch is `batch_size` times the number of ranks.
    pub fn new(len: usize, batch_size: usize, seed: u64) -> Self {
        assert!(
            len > 0 && batch_size > 0,
            "EpochSampler needs examples and a batch size"
        );
        let shard = crate::dist::current().map_or((0, 1), |g| (g.rank(), g.world_size()));
        EpochSampler {
            len,
            batch_size,
            seed,
            shard,
        }
    }

    /// Restrict to one rank's share of every epoch (data-parallel training).
    pub fn with_shard(mut self, rank: usize, world_size: usize) -> Self {
        assert!(
            world_size > 0 && rank < world_size,
            "rank {rank} outside world of {world_size}"
        );
        self.shard = (rank, world_size);
        self
    }

    /// The permutation of epoch `epoch` (Fisher-Yates driven by a SplitMix64 stream).
    pub fn permutation(&self, epoch: u64) -> Vec<usize> {
        let mut state = crate::seed::derive_seed(self.seed, epoch);
        let mut next = || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let mut order: Vec<usize> = (0..self.len).collect();
        for i in (1..self.len).rev() {
            // Lemire's multiply-shift maps 64 random bits onto 0..=i without modulo bias worth noting here.
            let j = ((next() as u128 * (i as u128 + 1)) >> 64) as usize;
            order.swap(i, j);
        }
        order
    }

    /// Example indices of mini-batch `step` (0-based) for this rank.
    pub fn batch(&self, step: u64) -> Vec<usize> {
        let (rank, world) = self.shard;
        let global = self.batch_size * world;
        let start = step as u128 * global as u128;
        let mut out = Vec::with_capacity(self.batch_size);
        let mut cached: Option<(u64, Vec<usize>)> = None;
        for k in 0..self.batch_size {
            let position = start + (k * world + rank) as u128;
            let epoch = (position / self.len as u128) as u64;
            let offset = (position % self.len as u128) as usize;
            if cached.as_ref().map(|c| c.0) != Some(epoch) {
                cached = Some((epoch, self.permutation(epoch)));
            }
            out.push(cached.as_ref().expect("just filled").1[offset]);
        }
        out
    }

    /// Mini-batches per epoch (rounded up) across all ranks.
    pub fn steps_per_epoch(&self) -> u64 {
        self.len.div_ceil(self.batch_size * self.shard.1) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_visits_every_example_once() {
        let s = EpochSampler::new(10, 5, 3);
        let mut seen: Vec<usize> = (0..2).flat_map(|b| s.batch(b)).collect();
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert_ne!(s.permutation(0), s.permutation(1));
        assert_ne!(s.permutation(0), (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn shards_partition_the_global_batch() {
        let a = EpochSampler::new(12, 3, 9).with_shard(0, 2);
        let b = EpochSampler::new(12, 3, 9).with_shard(1, 2);
        let mut seen: Vec<usize> = (0..2)
            .flat_map(|s| [a.batch(s), b.batch(s)].concat())
            .collect();
        seen.sort();
        assert_eq!(seen, (0..12).collect::<Vec<_>>());
    }

    #[test]
    fn the_repository_data_dir_is_a_plain_path() {
        let dir = super::repository_data_dir();
        assert!(
            dir.components()
                .all(|c| c != std::path::Component::ParentDir),
            "{}",
            dir.display()
        );
        assert!(dir.join("datasets.toml").is_file(), "{}", dir.display());
    }

    #[test]
    fn batches_depend_only_on_seed_and_step() {
        let s = EpochSampler::new(7, 4, 1);
        assert_eq!(s.batch(5), EpochSampler::new(7, 4, 1).batch(5));
        assert_eq!(s.batch(5).len(), 4);
    }
}

/// A `--data` argument as a run records it: a file or folder that exists (relative to the
/// working directory) becomes its absolute path, so `--resume` and `eval` work from any
/// directory, and it wins over a bundled dataset of the same name (a user's `./drums` folder is
/// theirs, not the bundled drums); anything else (a dataset name, a missing path that the loader
/// will report) is kept as typed.
pub fn recorded_data_path(arg: &str, dataset_names: &[&str]) -> String {
    let path = std::path::Path::new(arg);
    if arg.is_empty() || !path.exists() {
        return arg.to_string();
    }
    if dataset_names.contains(&arg) {
        tracing::info!("--data {arg}: using the folder {arg} here, not the bundled dataset");
    }
    std::path::absolute(path)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| arg.to_string())
}

#[cfg(test)]
mod recorded_data_path_tests {
    use super::recorded_data_path;

    #[test]
    fn existing_paths_become_absolute_and_names_stay() {
        let dir = tempfile::tempdir().unwrap();
        let abs = dir.path().to_str().unwrap().to_string();
        assert_eq!(recorded_data_path(&abs, &[]), abs);
        assert_eq!(
            recorded_data_path("mnist-not-here", &["mnist-not-here"]),
            "mnist-not-here"
        );
        assert_eq!(recorded_data_path("", &[]), "");
        // A relative path that exists comes back absolute.
        let here = std::env::current_dir().unwrap();
        let rel = recorded_data_path("Cargo.toml", &[]);
        assert_eq!(rel, here.join("Cargo.toml").to_string_lossy());
    }
}

/// The repository's `data/` folder, found from this crate's source folder (`crates/tensor`) and
/// written without `..` so messages show a plain path.
pub fn repository_data_dir() -> std::path::PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(std::path::Path::parent)
        .unwrap_or(manifest)
        .join("data")
}

/// Where named datasets live, for every modality: `$DIFFUSE_DATA_DIR`, else `./data/datasets` if
/// it exists (running from a checkout), else the repository's `data/datasets`.
pub fn default_datasets_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("DIFFUSE_DATA_DIR").filter(|d| !d.is_empty()) {
        return std::path::PathBuf::from(dir);
    }
    let local = std::path::PathBuf::from("data/datasets");
    if local.is_dir() {
        return local;
    }
    repository_data_dir().join("datasets")
}

/// Where bundled models live: `./data/models` when run from a checkout, else the repository's.
pub fn default_models_dir() -> std::path::PathBuf {
    let local = std::path::PathBuf::from("data/models");
    if local.is_dir() {
        return local;
    }
    repository_data_dir().join("models")
}
