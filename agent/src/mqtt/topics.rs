//! Topic names the agent owns, and matching topics against filters.

/// The topics of one device under the configured prefix.
#[derive(Debug, Clone)]
pub struct Topics {
    pub prefix: String,
    pub device: String,
    pub groups: Vec<String>,
}

/// Where a command came from: this device alone, one of its groups, or the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Device,
    Group(String),
    All,
}

impl Topics {
    fn own(&self, rest: &str) -> String {
        format!("{}/{}/{rest}", self.prefix, self.device)
    }
    pub fn status(&self) -> String {
        self.own("status")
    }
    pub fn telemetry(&self) -> String {
        self.own("telemetry")
    }
    pub fn events(&self) -> String {
        self.own("events")
    }
    pub fn results(&self, model: &str) -> String {
        self.own(&format!("results/{model}"))
    }
    pub fn reply(&self, command: &str) -> String {
        self.own(&format!("cmd/{command}/reply"))
    }

    /// The filters that bring commands to this device.
    pub fn command_filters(&self) -> Vec<String> {
        let mut f = vec![self.own("cmd/#"), format!("{}/all/cmd/#", self.prefix)];
        f.extend(self.groups.iter().map(|g| format!("{}/group/{g}/cmd/#", self.prefix)));
        f
    }

    /// The command name and scope of a command topic; `None` for anything else,
    /// including replies (which the `cmd/#` subscription also brings back).
    pub fn parse_command(&self, topic: &str) -> Option<(String, Scope)> {
        let (scope, name) = if let Some(rest) = topic.strip_prefix(&self.own("cmd/")) {
            (Scope::Device, rest)
        } else if let Some(rest) = topic.strip_prefix(&format!("{}/all/cmd/", self.prefix)) {
            (Scope::All, rest)
        } else {
            let rest = topic.strip_prefix(&format!("{}/group/", self.prefix))?;
            let (group, name) = rest.split_once("/cmd/")?;
            if !self.groups.iter().any(|g| g == group) {
                return None;
            }
            (Scope::Group(group.to_string()), name)
        };
        if name.is_empty() || name == "reply" || name.ends_with("/reply") {
            return None;
        }
        Some((name.to_string(), scope))
    }
}

/// Whether `topic` matches the MQTT filter (`+` one level, `#` the rest). Topics
/// starting with `$` match no wildcard at the first level, as MQTT says.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The level of `topic` at `index`, if it has one.
pub fn level(topic: &str, index: usize) -> Option<&str> {
    topic.split('/').nth(index).filter(|l| !l.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_as_mqtt_says() {
        assert!(matches("sensors/+/accel", "sensors/pump-7/accel"));
        assert!(!matches("sensors/+/accel", "sensors/pump-7/temp"));
        assert!(!matches("sensors/+/accel", "sensors/a/b/accel"));
        assert!(matches("sensors/#", "sensors/a/b"));
        assert!(matches("sensors/#", "sensors"));
        assert!(!matches("+/x", "$SYS/x"));
        assert_eq!(level("sensors/pump-7/accel", 1), Some("pump-7"));
        assert_eq!(level("sensors//accel", 1), None);
    }

    #[test]
    fn command_topics_parse() {
        let t = Topics { prefix: "edge".into(), device: "d1".into(), groups: vec!["line-1".into()] };
        assert_eq!(t.parse_command("edge/d1/cmd/ping"), Some(("ping".into(), Scope::Device)));
        assert_eq!(t.parse_command("edge/d1/cmd/config/get"), Some(("config/get".into(), Scope::Device)));
        assert_eq!(t.parse_command("edge/d1/cmd/config/get/reply"), None);
        assert_eq!(t.parse_command("edge/all/cmd/ping"), Some(("ping".into(), Scope::All)));
        assert_eq!(
            t.parse_command("edge/group/line-1/cmd/ping"),
            Some(("ping".into(), Scope::Group("line-1".into())))
        );
        assert_eq!(t.parse_command("edge/group/line-2/cmd/ping"), None);
        assert_eq!(t.parse_command("edge/d2/cmd/ping"), None);
    }
}
