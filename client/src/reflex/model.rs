//! The reflex file as written (YAML), with the places of its values for error messages.

use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileDef {
    pub thing: Spanned<String>,
    #[serde(default)]
    pub state: Option<Spanned<Value>>,
    #[serde(default)]
    pub on_command: Vec<Spanned<CommandDef>>,
    #[serde(default)]
    pub every: Vec<Spanned<EveryDef>>,
}

/// One entry of `on_command`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CommandDef {
    #[serde(rename = "match", default)]
    pub matches: Option<Spanned<Value>>,
    #[serde(default)]
    pub delay: Option<Spanned<Value>>,
    #[serde(default)]
    pub ack: Option<Spanned<Value>>,
    #[serde(default)]
    pub state: Option<Spanned<Value>>,
    #[serde(default)]
    pub event: Option<Spanned<Value>>,
    #[serde(default)]
    pub script: Option<Spanned<String>>,
    #[serde(rename = "do", default)]
    pub inline: Option<Spanned<String>>,
}

/// One entry of `every`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EveryDef {
    pub interval: Spanned<Value>,
    #[serde(default)]
    pub state: Option<Spanned<Value>>,
    #[serde(default)]
    pub event: Option<Spanned<Value>>,
    #[serde(default)]
    pub script: Option<Spanned<String>>,
    #[serde(rename = "do", default)]
    pub inline: Option<Spanned<String>>,
}
