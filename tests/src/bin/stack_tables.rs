//! Creates the tables of `infra/template.yaml` in the DynamoDB named by
//! `AWS_ENDPOINT_URL_DYNAMODB`. Used by `scripts/stack start`.
//!
//! `stack-tables [PREFIX]` prints `LogicalId=table-name` lines.

use anyhow::Context;
use oauth_sync_tests::template::{create_tables, template_path};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let prefix = std::env::args().nth(1).unwrap_or_else(|| "oauth-sync-".to_owned());
    let config = shared::aws::load_sdk_config().await;
    let client = aws_sdk_dynamodb::Client::new(&config);
    let names = create_tables(&client, &template_path(), &prefix)
        .await
        .context("creating the tables")?;
    for (logical_id, name) in names {
        #[allow(clippy::print_stdout)]
        {
            println!("{logical_id}={name}");
        }
    }
    Ok(())
}
