//! Creates the tables of `infra/template.yaml` in the DynamoDB named by
//! `AWS_ENDPOINT_URL_DYNAMODB`, and its event bus in the EventBridge named by
//! `AWS_ENDPOINT_URL_EVENTBRIDGE` (for the stack named PREFIX without its
//! last `-`). Used by `scripts/stack start`.
//!
//! `stack-tables [PREFIX]` prints `LogicalId=name` lines.

use anyhow::Context;
use oauth_sync_tests::template::{create_event_buses, create_tables, template_path};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let prefix = std::env::args().nth(1).unwrap_or_else(|| "oauth-sync-".to_owned());
    let config = shared::aws::sdk_config_from_env();
    let client = aws_sdk_dynamodb::Client::new(&config);
    let mut names = create_tables(&client, &template_path(), &prefix)
        .await
        .context("creating the tables")?;
    let eventbridge = aws_sdk_eventbridge::Client::new(&config);
    names.extend(
        create_event_buses(&eventbridge, &template_path(), prefix.trim_end_matches('-'))
            .await
            .context("creating the event bus")?,
    );
    for (logical_id, name) in names {
        #[allow(clippy::print_stdout)]
        {
            println!("{logical_id}={name}");
        }
    }
    Ok(())
}
