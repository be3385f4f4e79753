//! `settle bench`: load generators that drive the HTTP API on loopback.

use std::process::ExitCode;

use clap::Args;

#[derive(Args, Clone, Debug)]
pub struct BenchArgs {}

pub async fn run(_args: BenchArgs) -> Result<ExitCode, String> {
    Err("not built yet".into())
}
