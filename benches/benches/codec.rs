//! The wire codec's hot path, every frame a virtual client receives: `decode_server` of the frames
//! the simulation sends most, each beside its baseline measured in the same run, serde_json reading
//! the same bytes into an untyped `Value` (what any JSON reader must do at least); and
//! `encode_server` of the same messages beside serde_json writing that `Value` back.
//!
//! The frames are the median `query:diff` and `doc:diff` of swarm seed 1 (they are nine in ten of
//! the frames its clients receive) and a `query:result` of 40 documents (a subscription's first
//! answer, and every answer again after a reconnect).
//!
//! Run: `cargo bench -p roomlab-benches --bench codec`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use roomlab_protocol::{decode_server, encode_server};

/// The allocator `roomlab sim` runs with (see src/main.rs), for the codec and its baseline alike.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const QUERY_DIFF: &str = r#"{"type":"query:diff","sub":"s2","seq":247,"added":[{"id":"t3","doc_type":"tasks","seq":247,"owner":"u12","data":{"by":82,"priority":4,"status":"active"}}]}"#;

const DOC_DIFF: &str = r#"{"type":"doc:diff","sub":"s1","doc":"board","base":116,"seq":118,"lists":{"cards":{"put":[{"id":"c19-1","key":"Zx","value":{"by":19}}]}}}"#;

fn query_result(documents: usize) -> String {
    let docs: Vec<String> = (0..documents)
        .map(|n| {
            format!(
                r#"{{"id":"t{n}","doc_type":"tasks","seq":{},"owner":"u{}","data":{{"by":{},"priority":{},"status":"active","title":"task {n}"}}}}"#,
                100 + n,
                n % 20,
                n % 100,
                n % 5
            )
        })
        .collect();
    format!(r#"{{"type":"query:result","sub":"s3","seq":300,"docs":[{}]}}"#, docs.join(","))
}

fn bench(c: &mut Criterion) {
    let result = query_result(40);
    let frames = [("query:diff", QUERY_DIFF), ("doc:diff", DOC_DIFF), ("query:result-40", result.as_str())];
    let mut decoding = c.benchmark_group("codec/decode");
    for (name, frame) in frames {
        decoding.throughput(Throughput::Bytes(frame.len() as u64));
        decoding.bench_function(format!("{name}/decode_server"), |b| {
            b.iter(|| decode_server(std::hint::black_box(frame.as_bytes()), 1 << 20).expect("a valid frame"))
        });
        decoding.bench_function(format!("{name}/baseline-serde_json-value"), |b| {
            b.iter(|| {
                serde_json::from_slice::<serde_json::Value>(std::hint::black_box(frame.as_bytes()))
                    .expect("valid JSON")
            })
        });
    }
    decoding.finish();
    let mut encoding = c.benchmark_group("codec/encode");
    for (name, frame) in frames {
        let message = decode_server(frame.as_bytes(), 1 << 20).expect("a valid frame");
        let value: serde_json::Value = serde_json::from_str(frame).expect("valid JSON");
        // Both sides write as many bytes: the frames are as the server writes them, and the `Value`
        // writes the same fields with its keys sorted.
        assert_eq!(encode_server(&message), frame, "{name} encodes back to itself");
        let untyped = serde_json::to_string(&value).expect("serializable");
        assert_eq!(untyped.len(), frame.len(), "{name} as a Value");
        encoding.throughput(Throughput::Bytes(frame.len() as u64));
        encoding.bench_function(format!("{name}/encode_server"), |b| {
            b.iter(|| encode_server(std::hint::black_box(&message)))
        });
        encoding.bench_function(format!("{name}/baseline-serde_json-value"), |b| {
            b.iter(|| serde_json::to_string(std::hint::black_box(&value)).expect("serializable"))
        });
    }
    encoding.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(std::time::Duration::from_secs(2)).warm_up_time(std::time::Duration::from_millis(500));
    targets = bench
}
criterion_main!(benches);
