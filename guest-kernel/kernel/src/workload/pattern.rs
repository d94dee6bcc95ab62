//! Which page a workload writes next: uniform random, hot/cold (Zipf-like),
//! a sequential sweep. Cheap on purpose: on kvm_pvm every ring-0
//! instruction costs about a microsecond.

/// xorshift64*: fast, good enough to spread writes over an arena.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Every page equally likely.
    Uniform,
    /// Zipf with s = 1, by octaves: an octave (pages `2^k - 1 .. 2^(k+1) - 1`)
    /// is chosen uniformly, then a page within it, so page `i` is written
    /// with probability about `1 / ((i + 1) * octaves)`: a few hot pages at
    /// the start of the arena, a long cold tail.
    Zipf,
    /// Each CPU sweeps its own stride of the arena in order.
    Sequential,
    /// No writes.
    Idle,
}

impl Pattern {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "uniform" => Pattern::Uniform,
            "zipf" | "hotcold" => Pattern::Zipf,
            "seq" | "sequential" => Pattern::Sequential,
            "idle" => Pattern::Idle,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Pattern::Uniform => "uniform",
            Pattern::Zipf => "zipf",
            Pattern::Sequential => "seq",
            Pattern::Idle => "idle",
        }
    }

    /// The page (0-based, below `pages`) the `n`th write of CPU `cpu` of
    /// `cpus` goes to.
    pub fn pick(self, rng: &mut Rng, pages: u64, cpu: u64, cpus: u64, n: u64) -> u64 {
        match self {
            Pattern::Uniform | Pattern::Idle => rng.next() % pages,
            Pattern::Sequential => (cpu + n.wrapping_mul(cpus)) % pages,
            Pattern::Zipf => {
                let octaves = u64::from(64 - pages.leading_zeros());
                let octave = rng.next() % octaves;
                let first = (1u64 << octave) - 1;
                (first + rng.next() % (1u64 << octave)) % pages
            }
        }
    }
}
