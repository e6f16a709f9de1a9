//! Frontend speed: parse, check and plan a generated 1,000-instruction multi-stage Dockerfile
//! (ARGs, ENV, RUN with continuations and heredocs, COPY with flags, metadata), and compute
//! every step key. Run: `cargo bench --bench parse_plan`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kiln::frontend::Dockerfile;
use kiln::plan::{base_key, plan, Canon, PlanOptions};

/// A Dockerfile of `n` instructions spread over 10 stages.
fn generate(n: usize) -> String {
    let mut s = String::from("# syntax=docker/dockerfile:1\nARG VERSION=1.2.3\nARG BASE=scratch\n");
    let mut count = 2;
    let per_stage = n / 10;
    for stage in 0..10 {
        s.push_str(&format!("FROM ${{BASE}} AS stage{stage}\nARG VERSION\n"));
        count += 2;
        let mut i = 0;
        while i < per_stage - 2 && count < n {
            let line = match i % 8 {
                0 => format!("ENV PATH=/opt/s{stage}/bin:$PATH STEP={i} NAME=\"stage {stage}\"\n"),
                1 => format!(
                    "RUN --mount=type=cache,target=/var/cache/s{stage} set -e; \\\n    echo \"building ${{VERSION}}\" \\\n    && make -j2 target-{i}\n"
                ),
                2 => format!("COPY --chown=1000:1000 --chmod=0644 src/dir{i}/ /app/src/{i}/\n"),
                3 => format!("RUN <<EOF\nset -e\necho step {i} $VERSION\nls /app\nEOF\n"),
                4 => format!("LABEL org.example.step{i}=\"value {i}\" version=$VERSION\n"),
                5 => format!("WORKDIR /app/{i}\n"),
                6 if stage > 0 => format!("COPY --from=stage{} /app/out /deps/{stage}/{i}\n", stage - 1),
                6 => format!("COPY --link vendor/{i} /deps/{i}\n"),
                _ => format!("EXPOSE {}/tcp\n", 8000 + i),
            };
            s.push_str(&line);
            i += 1;
            count += 1;
        }
    }
    s.push_str("CMD [\"/app/run\"]\n");
    s
}

fn bench(c: &mut Criterion) {
    let text = generate(1000);
    let df = Dockerfile::parse("Dockerfile", text.as_bytes()).unwrap();
    assert!(
        df.instructions.len() >= 1000,
        "{} instructions",
        df.instructions.len()
    );
    let opts = PlanOptions::default();
    let mut g = c.benchmark_group("frontend");
    g.throughput(Throughput::Elements(df.instructions.len() as u64));
    g.bench_function("parse_1000_instructions", |b| {
        b.iter(|| Dockerfile::parse("Dockerfile", text.as_bytes()).unwrap())
    });
    g.bench_function("parse_plan_key_1000_instructions", |b| {
        b.iter(|| {
            let df = Dockerfile::parse("Dockerfile", text.as_bytes()).unwrap();
            let p = plan(&df, &opts).unwrap();
            let mut keys = 0;
            for s in &p.stages {
                let mut k = base_key("scratch");
                for st in &s.steps {
                    k = st.key(&k, &Canon::new());
                    keys += 1;
                }
            }
            keys
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
