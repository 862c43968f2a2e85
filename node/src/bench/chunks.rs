//! `novacron bench chunks`: the chunk store per chunk size (4, 16, 64 KiB) on the benchmark
//! workloads, against blake3 and zstd level 1 over the whole buffer in the same run.

use anyhow::Context;
use clap::Args;
use novacron_mesh::chunks::bench_support::{measure, ChunkBench};
use novacron_mesh::workload::{mostly_zero, pattern, random};

use super::report::Report;

#[derive(Args, Debug)]
pub struct ChunksBenchArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// MiB of each workload buffer.
    #[arg(long, default_value_t = 64)]
    mib: usize,
    /// Where the store figures write (default: the system temp dir); the file system
    /// under it decides the put figures.
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

impl ChunksBenchArgs {
    pub fn json(&self) -> bool {
        self.json
    }
}

pub fn run(args: &ChunksBenchArgs) -> anyhow::Result<Report> {
    let len = args.mib.max(1) << 20;
    let scratch = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let mut report = Report::new("chunks");
    for (name, buf) in [
        ("pattern", pattern(len)),
        ("random", random(len, 0x9E37_79B9)),
        ("mostly_zero", mostly_zero(len)),
    ] {
        let bench = measure(&buf, &scratch).with_context(|| format!("workload {name}"))?;
        add(&mut report, name, &bench);
    }
    report.notes.push(format!(
        "{} MiB per workload; MiB/s of the whole buffer; one thread unless *_all_*; \
         references (blake3, zstd1) over the whole buffer in the same run",
        args.mib
    ));
    Ok(report)
}

fn add(report: &mut Report, workload: &str, b: &ChunkBench) {
    report.add(
        &format!("{workload}.blake3_mib_s"),
        b.blake3_mib_s,
        "MiB/s",
        None,
    );
    report.add(
        &format!("{workload}.zstd1_mib_s"),
        b.zstd1_mib_s,
        "MiB/s",
        None,
    );
    report.add(&format!("{workload}.zstd1_ratio"), b.zstd1_ratio, "x", None);
    for s in &b.sizes {
        let k = format!("{workload}.k{}", s.chunk_size.bytes() >> 10);
        report.add(&format!("{k}.hash_mib_s"), s.hash_mib_s, "MiB/s", None);
        report.add(
            &format!("{k}.hash_all_mib_s"),
            s.hash_all_mib_s,
            "MiB/s",
            None,
        );
        report.add(
            &format!("{k}.compress_mib_s"),
            s.compress_mib_s,
            "MiB/s",
            None,
        );
        report.add(
            &format!("{k}.compress_no_precheck_mib_s"),
            s.compress_no_precheck_mib_s,
            "MiB/s",
            None,
        );
        report.add(&format!("{k}.ratio"), s.ratio, "x", None);
        report.add(
            &format!("{k}.decompress_mib_s"),
            s.decompress_mib_s,
            "MiB/s",
            None,
        );
        report.add(&format!("{k}.put_mib_s"), s.put_mib_s, "MiB/s", None);
        report.add(&format!("{k}.get_mib_s"), s.get_mib_s, "MiB/s", None);
        report.add(&format!("{k}.zero_chunks"), s.zero_chunks as f64, "", None);
        report.add(&format!("{k}.raw_chunks"), s.raw_chunks as f64, "", None);
    }
}
