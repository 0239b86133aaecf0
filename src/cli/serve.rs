use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::Cli;
use crate::serve::{MAX_BODY_LEN, ServeConfig, TlsFiles};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port to listen on. Port 0 picks a free port, which the
    /// first line of output shows.
    #[arg(long, value_name = "ADDRESS:PORT", default_value = "127.0.0.1:8420")]
    listen: SocketAddr,
    /// PEM file with the server's certificate chain, leaf first. Without it
    /// and --tls-key the server speaks plain HTTP, which belongs only on
    /// loopback or a trusted network.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM file with the private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Largest request body in MiB, which limits packs and index files.
    /// Smaller files have smaller limits.
    #[arg(long, value_name = "MIB", default_value_t = (MAX_BODY_LEN >> 20) as u64,
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    max_body_size: u64,
}

pub fn run(cli: &Cli, args: &ServeArgs) -> anyhow::Result<i32> {
    let config = ServeConfig::load(&cli.config).map_err(anyhow::Error::msg)?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => None,
    };
    crate::serve::serve(
        config,
        args.listen,
        tls,
        (args.max_body_size << 20) as usize,
    )
    .with_context(|| format!("cairn serve on {} stopped", args.listen))?;
    Ok(super::EXIT_OK)
}
