//! Plugin configuration: `[plugins.NAME]` (global) and `[routes.R.plugins.NAME]` (per route),
//! built through the explicit registry of `gantry-plugins` and compiled into per-route chains.

use super::document::Document;
use super::error::{did_you_mean, KeyPath};
use super::model::ConsumerSection;
use gantry_plugins::gateway::TemplateScope;
use gantry_plugins::gateway::{ConsumerSpec, Consumers};
use gantry_plugins::registry::{self, Build, BuildContext, ConfigSource, PluginScope};
use gantry_plugins::{Plugin, PluginChain, SlotAllocator};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use toml::de::DeValue;
use toml::Spanned;

/// A route's plugin entry: a configured instance, or `None` for `enabled = false`.
pub type Override = (String, Option<Arc<dyn Plugin>>);

/// The `[plugins.*]` instances by name.
pub type GlobalPlugins = Vec<(String, Arc<dyn Plugin>)>;

/// Feeds one plugin table to the registry, reporting problems through the document.
struct TableSource<'d, 'a> {
    doc: &'d mut Document<'a>,
    key: &'d KeyPath,
    value: Option<Spanned<DeValue<'a>>>,
}

impl ConfigSource for TableSource<'_, '_> {
    fn parse<T: DeserializeOwned>(&mut self) -> Option<T> {
        let value = self.value.take()?;
        self.doc.deserialize(self.key, value)
    }
}

/// `[plugins.*]`: the plugins applied to every route, and the slot allocator the routes'
/// own plugins continue from.
pub fn global<'a>(
    doc: &mut Document<'a>,
    section: Option<Spanned<DeValue<'a>>>,
    ctx: &BuildContext,
) -> (GlobalPlugins, SlotAllocator) {
    let mut scope = PluginScope {
        name: "global".into(),
        templates: TemplateScope::default(),
        slots: SlotAllocator::default(),
    };
    let Some(section) = section else {
        return (Vec::new(), scope.slots);
    };
    let section_key = KeyPath::root("plugins");
    let plugins = doc
        .entries(&section_key, section)
        .into_iter()
        .filter_map(|e| {
            let key = section_key.child(&e.name);
            build(doc, &key, &mut scope, &e.name, e.value, ctx).map(|p| (e.name, p))
        })
        .collect();
    (plugins, scope.slots)
}

/// The regexes of a route's `~` paths, for `$path.NAME` in its plugins' templates. Invalid
/// ones are left out here; the route's own checks report them.
pub fn regex_paths(route: &Spanned<DeValue<'_>>) -> Vec<regex::Regex> {
    let DeValue::Table(table) = route.get_ref() else {
        return Vec::new();
    };
    let Some(paths) = table.iter().find(|(k, _)| k.get_ref() == "paths") else {
        return Vec::new();
    };
    let DeValue::Array(paths) = paths.1.get_ref() else {
        return Vec::new();
    };
    paths
        .iter()
        .filter_map(|p| match p.get_ref() {
            DeValue::String(s) => s.strip_prefix('~').and_then(|r| regex::Regex::new(r).ok()),
            _ => None,
        })
        .collect()
}

/// `[routes.R.plugins.*]`: the route's replacements and `enabled = false` switches.
/// `path_regexes` are the route's regex paths; `slots` continues from the global plugins'.
pub fn route<'a>(
    doc: &mut Document<'a>,
    route_name: &str,
    section: Spanned<DeValue<'a>>,
    path_regexes: Vec<regex::Regex>,
    slots: SlotAllocator,
    ctx: &BuildContext,
) -> Vec<Override> {
    let section_key = KeyPath::root("routes").child(route_name).child("plugins");
    let mut scope = PluginScope {
        name: format!("route:{route_name}"),
        templates: TemplateScope { path_regexes },
        slots,
    };
    doc.entries(&section_key, section)
        .into_iter()
        .filter_map(|mut e| {
            let key = section_key.child(&e.name);
            let span = e.value.span();
            match Document::take_child(&mut e.value, "enabled").map(Spanned::into_inner) {
                None | Some(DeValue::Boolean(true)) => {
                    build(doc, &key, &mut scope, &e.name, e.value, ctx).map(|p| (e.name, Some(p)))
                }
                Some(DeValue::Boolean(false)) => {
                    if !registry::names().any(|n| n == e.name) {
                        unknown(doc, span, &key, &e.name);
                        return None;
                    }
                    Some((e.name, None))
                }
                Some(_) => {
                    doc.report(
                        Some(span),
                        &key.child("enabled"),
                        "`enabled` must be true or false",
                        None,
                    );
                    None
                }
            }
        })
        .collect()
}

/// The route's chain: global plugins not overridden, plus the route's own, grouped by phase.
pub fn chain(global: &GlobalPlugins, overrides: &[Override]) -> PluginChain {
    PluginChain::new(
        global
            .iter()
            .filter(|(name, _)| !overrides.iter().any(|(o, _)| o == name))
            .map(|(_, p)| Arc::clone(p))
            .chain(overrides.iter().filter_map(|(_, p)| p.clone()))
            .collect(),
    )
}

fn build<'a>(
    doc: &mut Document<'a>,
    key: &KeyPath,
    scope: &mut PluginScope,
    name: &str,
    value: Spanned<DeValue<'a>>,
    ctx: &BuildContext,
) -> Option<Arc<dyn Plugin>> {
    let span = value.span();
    let mut source = TableSource {
        doc,
        key,
        value: Some(value),
    };
    match registry::build(name, scope, &mut source, ctx) {
        Build::Ready(plugin) => Some(plugin),
        Build::Invalid => None,
        Build::Failed(message) => {
            doc.report(Some(span), key, message, None);
            None
        }
        Build::Unknown => {
            unknown(doc, span, key, name);
            None
        }
    }
}

fn unknown(doc: &mut Document<'_>, span: std::ops::Range<usize>, key: &KeyPath, name: &str) {
    let names: Vec<&str> = registry::names().collect();
    let hint = did_you_mean(name, names.iter().copied())
        .or_else(|| Some(format!("built-in plugins: {}", names.join(", "))));
    doc.report(Some(span), key, format!("unknown plugin `{name}`"), hint);
}

/// `[consumers.*]`, indexed for the authentication plugins.
pub fn consumers<'a>(
    doc: &mut Document<'a>,
    section: Option<Spanned<DeValue<'a>>>,
) -> Arc<Consumers> {
    let entries = doc.deserialize_entries::<ConsumerSection>("consumers", section);
    let sections: Vec<_> = entries
        .iter()
        .filter_map(|(name, _, s)| s.as_ref().map(|s| (name, s)))
        .collect();
    let specs = sections.iter().map(|(name, s)| ConsumerSpec {
        name,
        groups: &s.groups,
        keys: &s.keys,
        password: s.password.as_deref(),
        jwt_subject: s.jwt_subject.as_deref(),
    });
    match Consumers::new(specs) {
        Ok(consumers) => Arc::new(consumers),
        Err(problems) => {
            for problem in problems {
                let span = entries
                    .iter()
                    .find(|(name, _, _)| name.as_str() == problem.consumer())
                    .map(|(_, span, _)| span.clone());
                let key = KeyPath::from(problem.key_path());
                doc.report_redacted(span, &key, problem.to_string());
            }
            Arc::new(Consumers::default())
        }
    }
}
