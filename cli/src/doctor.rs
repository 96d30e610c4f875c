//! `doctor` and `deploy-check`: the set-up checked, one finding a line, each
//! naming the fix for what is wrong. `doctor` checks the providers (settings,
//! discovery, credentials) and the connections that cannot be refreshed;
//! `deploy-check` the stack's outputs, the redirect URIs and the secrets.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use shared::config::Config;
use shared::connection::store::ConnectionStore;
use shared::secrets::SecretStore;

use crate::config::config_secret_name;
use crate::output::{table, write_out};

/// `doctor [PROVIDER]`: fails when any check fails.
pub async fn doctor(config_file: PathBuf, only: Option<String>, as_json: bool) -> anyhow::Result<()> {
    use shared::doctor::{Verdict, check_credentials, check_service_secrets, check_settings};
    let config = Config::load_and_discover(&config_file).await?;
    let providers: Vec<_> = match &only {
        Some(name) => vec![config.provider(name)?],
        None => config.providers.values().collect(),
    };
    let aws = crate::aws::clients().await;
    let secrets = SecretStore::new(aws.secrets);
    let http = shared::http::client(Duration::from_secs(10), shared::http::Pooling::Off)?;
    let mut findings = check_service_secrets(&config.service, &secrets).await;
    for provider in providers {
        findings.extend(check_settings(provider, &config.service));
        findings.extend(shared::doctor::check_discovery(provider).await);
        findings.extend(check_credentials(provider, &secrets, &http).await);
    }
    // With the connections table at hand, each connection that cannot be refreshed is named.
    if let Some(table) = std::env::var(shared::runtime::CONNECTIONS_TABLE_ENV)
        .ok()
        .filter(|t| !t.is_empty())
    {
        let store = ConnectionStore::new(aws.dynamodb.clone(), table);
        let connections = store.list().await?;
        let connections: Vec<_> = connections
            .into_iter()
            .filter(|c| only.as_ref().is_none_or(|p| *p == c.provider))
            .collect();
        findings.extend(shared::doctor::check_connections(&connections));
    }
    print_findings(&findings, as_json)?;
    let failed = findings.iter().filter(|f| f.verdict == Verdict::Fail).count();
    anyhow::ensure!(failed == 0, "{failed} check(s) failed");
    Ok(())
}

/// How long `aws cloudformation describe-stacks` may take.
const STACK_TIMEOUT: Duration = Duration::from_secs(30);

/// `deploy-check [--stack NAME]`: fails when any check fails.
pub async fn deploy_check(config_file: PathBuf, stack: Option<String>, as_json: bool) -> anyhow::Result<()> {
    use shared::doctor::{Verdict, check_deployment_secrets, check_settings, check_stack_outputs};
    let config = Config::load_and_discover(&config_file).await?;
    let local_text = std::fs::read_to_string(&config_file)?;
    let mut findings = Vec::new();
    if let Some(stack) = &stack {
        let outputs = stack_outputs(stack).await?;
        findings.extend(check_stack_outputs(&outputs, &config.service, &|var| {
            std::env::var(var).ok().filter(|v| !v.is_empty())
        }));
    }
    for provider in config.providers.values() {
        findings.extend(
            check_settings(provider, &config.service)
                .into_iter()
                .filter(|f| f.check == "redirect URI"),
        );
    }
    let aws = crate::aws::clients().await;
    let secrets = SecretStore::new(aws.secrets);
    findings.extend(check_deployment_secrets(&config, &local_text, &config_secret_name(), &secrets).await);
    print_findings(&findings, as_json)?;
    let failed = findings.iter().filter(|f| f.verdict == Verdict::Fail).count();
    anyhow::ensure!(failed == 0, "{failed} check(s) failed");
    Ok(())
}

/// The stack's outputs, from `aws cloudformation describe-stacks` (the AWS
/// CLI the operator deploys with; no CloudFormation SDK compiled in), killed
/// after [`STACK_TIMEOUT`].
async fn stack_outputs(stack: &str) -> anyhow::Result<BTreeMap<String, String>> {
    use std::io::Read;
    use std::process::{Command as Process, Stdio};
    let mut child = Process::new("aws")
        .args([
            "cloudformation",
            "describe-stacks",
            "--stack-name",
            stack,
            "--output",
            "json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("--stack reads the stack's outputs with the AWS CLI (`aws`), which is not installed here")?;
    let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
    let reader = std::thread::spawn(move || {
        let (mut out, mut err) = (String::new(), String::new());
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_string(&mut out);
        }
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_string(&mut err);
        }
        (out, err)
    });
    let deadline = Instant::now() + STACK_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!(
                "`aws cloudformation describe-stacks` did not answer in {}s",
                STACK_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (out, err) = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reading the AWS CLI's output failed"))?;
    anyhow::ensure!(
        status.success(),
        "`aws cloudformation describe-stacks --stack-name {stack}` failed: {}",
        err.trim().chars().take(500).collect::<String>()
    );
    let value: serde_json::Value = serde_json::from_str(&out).context("the AWS CLI's answer is not JSON")?;
    let outputs = value["Stacks"][0]["Outputs"].as_array().cloned().unwrap_or_default();
    Ok(outputs
        .iter()
        .filter_map(|o| {
            Some((
                o["OutputKey"].as_str()?.to_owned(),
                o["OutputValue"].as_str()?.to_owned(),
            ))
        })
        .collect())
}

fn print_findings(findings: &[shared::doctor::Finding], as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return write_out(&format!("{}\n", serde_json::to_string_pretty(findings)?));
    }
    let rows: Vec<Vec<String>> = findings
        .iter()
        .map(|f| {
            let verdict = match f.verdict {
                shared::doctor::Verdict::Ok => "ok",
                shared::doctor::Verdict::Warn => "warn",
                shared::doctor::Verdict::Fail => "FAIL",
            };
            vec![
                f.subject.clone(),
                f.check.to_owned(),
                verdict.to_owned(),
                f.detail.clone(),
            ]
        })
        .collect();
    write_out(&table(&["subject", "check", "result", "detail"], &rows))
}
