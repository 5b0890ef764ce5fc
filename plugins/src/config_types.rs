//! Value types shared by the gateway's and the plugins' configuration.

use serde::de::{self, Deserializer};
use serde::Deserialize;
use std::time::Duration;

/// A humantime duration such as `"500ms"`, `"1s"` or `"2m 30s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text)
            .map(HumanDuration)
            .map_err(|e| {
                de::Error::custom(format!(
                    "invalid duration `{text}`: {e} (write it like \"500ms\", \"1s\" or \"2m\")"
                ))
            })
    }
}
