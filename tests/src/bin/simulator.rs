//! The provider simulator as a process, for the demo and multi-process tests.
//!
//! ```text
//! simulator [--preset generic] [--port 0] [--client-id ID] [--client-secret S]
//!           [--access-ttl-secs N] [--grace-secs N] [--rotate true|false]
//! ```
//! Prints `listening http://127.0.0.1:PORT` on stdout once it accepts connections.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use oauth_sync_tests::simulator::{SimConfig, Simulator};
use shared::config::PresetName;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut config = SimConfig::for_preset(PresetName::Generic);
    let mut port = 0u16;
    let mut overrides = Vec::new();
    while let Some(flag) = args.next() {
        let value = args.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--preset" => {
                let preset: PresetName = serde_json::from_value(serde_json::Value::String(value.clone()))
                    .with_context(|| format!("unknown preset `{value}`"))?;
                config = SimConfig::for_preset(preset);
            }
            "--port" => port = value.parse().context("--port")?,
            _ => overrides.push((flag, value)),
        }
    }
    for (flag, value) in overrides {
        match flag.as_str() {
            "--client-id" => config.client_id = value,
            "--client-secret" => config.client_secret = value,
            "--access-ttl-secs" => {
                config.access_token_ttl = Duration::from_secs(value.parse().context("--access-ttl-secs")?)
            }
            "--grace-secs" => config.reuse_grace = Duration::from_secs(value.parse().context("--grace-secs")?),
            "--rotate" => config.rotate_refresh_tokens = value.parse().context("--rotate")?,
            other => bail!("unknown flag {other}"),
        }
    }
    let handle = Simulator::start(config, SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
    #[allow(clippy::print_stdout)]
    {
        println!("listening {}", handle.base_url);
    }
    // Runs until the process is stopped (the stack script sends SIGTERM).
    std::future::pending::<()>().await;
    drop(handle);
    Ok(())
}
