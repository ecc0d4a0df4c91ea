//! `spool/flush {classes}`: drops the telemetry reports and/or results waiting in the
//! spool, unsent: on a metered link, a backlog from a long outage can cost more than it
//! is worth (docs/data-usage.md). Events and command replies cannot be dropped.
//!
//! What is in the spool when the command arrives goes, as the outbox reaches it (at the
//! next connection, if the link is down); what is spooled later is kept. Each record
//! dropped is counted in `mqtt.dropped` by class, as the spool's bound counts its drops.

use serde::Deserialize;
use serde_json::json;

use super::args::Args;
use super::{Context, Outcome};
use edge_spool::Class;

/// Arguments of `spool/flush`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolFlushArgs {
    /// `telemetry` and/or `result`.
    #[serde(default)]
    pub classes: Option<Vec<String>>,
}

impl Args for SpoolFlushArgs {
    const COMMAND: &'static str = "spool/flush";
}

/// The classes to drop, checked.
pub struct Checked {
    classes: Vec<Class>,
}

/// Checks the classes, and that this device has the MQTT link's spool.
pub fn prepare(args: SpoolFlushArgs, ctx: &Context) -> Result<Checked, String> {
    if ctx.outbox.is_none() {
        return Err("there is no spool on this device: MQTT is not configured".into());
    }
    let Some(names) = args.classes.filter(|c| !c.is_empty()) else {
        return Err("spool/flush needs `args.classes`: [\"telemetry\"], [\"result\"] or both".into());
    };
    let mut classes = Vec::new();
    for name in names {
        let class = match name.as_str() {
            "telemetry" => Class::Telemetry,
            "result" => Class::Result,
            "event" | "reply" => {
                return Err(format!(
                    "`{name}` cannot be flushed: events and command replies are always delivered"
                ));
            }
            other => {
                return Err(format!(
                    "`{}` is not a class of the spool; use \"telemetry\" or \"result\"",
                    crate::mqtt::excerpt(other, 32)
                ));
            }
        };
        if !classes.contains(&class) {
            classes.push(class);
        }
    }
    Ok(Checked { classes })
}

/// Asks the outbox to drop them.
pub fn run(checked: Checked, ctx: &Context) -> Outcome {
    let Some(outbox) = &ctx.outbox else {
        return Outcome::Failed("the MQTT link is gone".into());
    };
    outbox.request_flush(&checked.classes);
    let report = outbox.report();
    Outcome::Succeeded(json!({
        "dropping": checked.classes.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
        "spool_records": report.spool_records,
    }))
}
