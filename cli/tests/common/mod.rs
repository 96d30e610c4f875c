//! Running the CLI binary as an operator would, shared by the CLI's test files.

use std::process::Command;

/// Runs `oauth-sync` with `args` and the extra environment `env`;
/// `(success, stdout, stderr)`.
pub fn oauth_sync_with(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_oauth-sync"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run oauth-sync");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
