//! Fractional keys: keys per second and key length for append, prepend and same-gap inserts, at
//! 1,000 and 10,000 keys, for the midpoint rule (the public package's algorithm, the baseline) and
//! for roomlab's short and jittered allocators.
//!
//! Run: `cargo bench -p roomlab-benches --bench fracdex`. The lengths print once per case.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand_chacha::rand_core::SeedableRng;
use roomlab_protocol::fracdex::{key_between, key_between_jittered, key_between_short, FracdexError};

type Allocator = fn(Option<&str>, Option<&str>, &mut rand_chacha::ChaCha8Rng) -> Result<String, FracdexError>;

fn midpoint(
    a: Option<&str>,
    b: Option<&str>,
    _: &mut rand_chacha::ChaCha8Rng,
) -> Result<String, FracdexError> {
    key_between(a, b)
}

fn short(a: Option<&str>, b: Option<&str>, _: &mut rand_chacha::ChaCha8Rng) -> Result<String, FracdexError> {
    key_between_short(a, b)
}

fn jittered(
    a: Option<&str>,
    b: Option<&str>,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> Result<String, FracdexError> {
    key_between_jittered(a, b, rng)
}

/// Inserts `n` keys by `pattern` and returns the longest key.
fn run(pattern: &str, n: usize, allocate: Allocator) -> usize {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut newest: Option<String> = None;
    let mut longest = 0;
    for _ in 0..n {
        let key = match pattern {
            "append" => allocate(newest.as_deref(), None, &mut rng),
            "prepend" => allocate(None, newest.as_deref(), &mut rng),
            _ => allocate(Some("a0"), Some(newest.as_deref().unwrap_or("a1")), &mut rng),
        }
        .expect("key");
        longest = longest.max(key.len());
        newest = Some(key);
    }
    longest
}

fn bench(c: &mut Criterion) {
    let allocators: [(&str, Allocator); 3] =
        [("midpoint", midpoint), ("short", short), ("jittered", jittered)];
    for pattern in ["append", "prepend", "same-gap"] {
        let mut group = c.benchmark_group(format!("fracdex/{pattern}"));
        for n in [1_000usize, 10_000] {
            for (name, allocate) in allocators {
                // The midpoint rule's same-gap keys grow by a character every six inserts; at 10,000
                // they reach about 1,700 characters, past the protocol's key limit.
                if pattern == "same-gap" && name == "midpoint" && n > 1_000 {
                    continue;
                }
                println!(
                    "length {pattern} {name} n={n}: longest key {} characters",
                    run(pattern, n, allocate)
                );
                group.throughput(Throughput::Elements(n as u64));
                group.bench_with_input(BenchmarkId::new(name, n), &n, |b, &n| {
                    b.iter(|| run(pattern, n, allocate))
                });
            }
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(std::time::Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
