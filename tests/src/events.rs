//! Events on the local stack: moto's EventBridge and SQS (one moto server,
//! `AWS_ENDPOINT_URL_EVENTBRIDGE` / `AWS_ENDPOINT_URL_SQS`). A test gets a
//! bus of its own, made from `infra/template.yaml`'s definition, a queue and
//! a rule on the bus that sends every `oauth-sync` event to the queue, as an
//! operator's application would subscribe.

use std::time::Duration;

use serde_json::{Value, json};
use shared::events::{EventSink, PublishSettings, SOURCE};

use crate::stack::unique_prefix;
use crate::template::{create_event_buses, template_path};

/// A received event: the EventBridge envelope (`detail-type`, `source`,
/// `detail`…), as a rule's SQS target gets it.
pub type Envelope = Value;

/// A bus of the test's own, with a rule sending its events to a queue.
#[derive(Debug)]
pub struct EventsFixture {
    pub bus: String,
    pub queue_url: String,
    pub sqs: aws_sdk_sqs::Client,
    pub eventbridge: aws_sdk_eventbridge::Client,
    sdk: shared::aws::SdkConfig,
}

impl EventsFixture {
    /// The template's bus for a stack named after `test`, a queue, and a
    /// rule (`source = oauth-sync`) targeting the queue.
    pub async fn start(test: &str) -> EventsFixture {
        for var in ["AWS_ENDPOINT_URL_EVENTBRIDGE", "AWS_ENDPOINT_URL_SQS"] {
            let value = std::env::var(var).unwrap_or_default();
            assert!(
                value.starts_with("http://127.0.0.1:"),
                "{var} is `{value}`: start the local stack (scripts/stack start) and source its env file"
            );
        }
        let sdk = shared::aws::sdk_config_from_env();
        let eventbridge = aws_sdk_eventbridge::Client::new(&sdk);
        let stack = unique_prefix(test).trim_end_matches('-').to_owned();
        let buses = create_event_buses(&eventbridge, &template_path(), &stack)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let bus = buses.get("EventBus").cloned().expect("the template's EventBus");
        EventsFixture::subscribe(&sdk, &bus, &stack).await
    }

    /// A queue named `{name}-events` and a rule `{name}-all` on an existing
    /// `bus` sending it every `oauth-sync` event.
    pub async fn subscribe(sdk: &shared::aws::SdkConfig, bus: &str, name: &str) -> EventsFixture {
        let (sdk, bus, stack) = (sdk.clone(), bus.to_owned(), name.to_owned());
        let eventbridge = aws_sdk_eventbridge::Client::new(&sdk);
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let queue_url = sqs
            .create_queue()
            .queue_name(format!("{stack}-events"))
            .send()
            .await
            .expect("create queue")
            .queue_url
            .expect("queue url");
        let queue_arn = sqs
            .get_queue_attributes()
            .queue_url(&queue_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .expect("queue attributes")
            .attributes
            .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn).cloned())
            .expect("queue arn");
        let rule = format!("{stack}-all");
        eventbridge
            .put_rule()
            .name(&rule)
            .event_bus_name(&bus)
            .event_pattern(json!({"source": [SOURCE]}).to_string())
            .send()
            .await
            .expect("put rule");
        eventbridge
            .put_targets()
            .rule(&rule)
            .event_bus_name(&bus)
            .targets(
                aws_sdk_eventbridge::types::Target::builder()
                    .id("queue")
                    .arn(queue_arn)
                    .build()
                    .expect("target"),
            )
            .send()
            .await
            .expect("put targets");
        EventsFixture {
            bus,
            queue_url,
            sqs,
            eventbridge,
            sdk,
        }
    }

    /// A sink publishing to this bus, as `App` builds one.
    pub fn sink(&self) -> EventSink {
        EventSink::new(&self.sdk, &self.bus, PublishSettings::default())
    }

    /// Receives events until `done` says the ones received so far are
    /// enough, or nothing more arrives for `quiet` (moto delivers to the
    /// queue within the `PutEvents` call: what was published is there).
    /// Every event received, in order.
    pub async fn receive(&self, quiet: Duration, done: impl Fn(&[Envelope]) -> bool) -> Vec<Envelope> {
        let mut received = Vec::new();
        let mut idle = Duration::ZERO;
        while !done(&received) && idle < quiet {
            let answer = self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .send()
                .await
                .expect("receive");
            let messages = answer.messages.unwrap_or_default();
            if messages.is_empty() {
                idle += Duration::from_secs(1);
                continue;
            }
            idle = Duration::ZERO;
            for message in messages {
                let body = message.body.unwrap_or_default();
                received.push(serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}")));
                if let Some(handle) = message.receipt_handle {
                    self.sqs
                        .delete_message()
                        .queue_url(&self.queue_url)
                        .receipt_handle(handle)
                        .send()
                        .await
                        .expect("delete message");
                }
            }
        }
        received
    }

    /// Every event received until nothing more arrives for two seconds.
    pub async fn drain(&self) -> Vec<Envelope> {
        self.receive(Duration::from_secs(2), |_| false).await
    }
}

/// The events of one detail type.
pub fn of_type<'a>(events: &'a [Envelope], detail_type: &str) -> Vec<&'a Envelope> {
    events.iter().filter(|e| e["detail-type"] == detail_type).collect()
}
