//! Plugin configuration: `[plugins.NAME]` (global) and `[routes.R.plugins.NAME]` (per route),
//! built through the explicit registry of `gantry-plugins` and compiled into per-route chains.
//!
//! The global plugins are built first and claim their state slots; each route's plugins are
//! built while the route is compiled ([`super::compile::Compiler::route`]), after its paths, so
//! `$path.NAME` in their templates is checked against the route's compiled regexes.

use super::document::Document;
use super::error::{did_you_mean, KeyPath};
use super::model::ConsumerSection;
use crate::router::PathPattern;
use gantry_plugins::gateway::{ConsumerSpec, Consumers, TemplateScope, CACHE_PLUGIN};
use gantry_plugins::registry::{self, Build, BuildContext, ConfigSource, PluginScope};
use gantry_plugins::{Plugin, PluginChain, SlotAllocator};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::sync::Arc;
use toml::de::{DeValue, ValueDeserializer};
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

/// The `[plugins.*]` instances, and what every route's own plugins are built with.
pub struct Plugins {
    global: GlobalPlugins,
    /// The state slots after the global plugins claimed theirs: each route's plugins continue
    /// from a copy.
    slots: SlotAllocator,
    ctx: BuildContext,
}

/// A route's plugins.
pub struct RoutePlugins {
    /// Global plugins not overridden, plus the route's own, grouped by phase.
    pub chain: PluginChain,
    /// The route configures the `cache` plugin itself (and it built).
    pub own_cache: bool,
}

/// `[plugins.*]`: the plugins applied to every route, built first so they claim their slots
/// before any route's plugins.
pub fn global<'a>(
    doc: &mut Document<'a>,
    section: Option<Spanned<DeValue<'a>>>,
    ctx: BuildContext,
) -> Plugins {
    let mut scope = PluginScope {
        name: "global".into(),
        templates: TemplateScope::default(),
        slots: SlotAllocator::default(),
    };
    let section_key = KeyPath::root("plugins");
    let global = section.map_or_else(Vec::new, |section| {
        doc.entries(&section_key, section)
            .into_iter()
            .filter_map(|e| {
                let key = section_key.child(&e.name);
                build(doc, &key, &mut scope, &e.name, e.value, &ctx).map(|p| (e.name, p))
            })
            .collect()
    });
    Plugins {
        global,
        slots: scope.slots,
        ctx,
    }
}

impl Plugins {
    /// The plugins of route `route_name`: `section` is its `[routes.R.plugins.*]` (the
    /// replacements and `enabled = false` switches), `templates` its compiled regex paths.
    pub fn route<'a>(
        &self,
        doc: &mut Document<'a>,
        route_name: &str,
        section: Option<Spanned<DeValue<'a>>>,
        templates: TemplateScope,
    ) -> RoutePlugins {
        let overrides = section
            .map(|section| self.overrides(doc, route_name, section, templates))
            .unwrap_or_default();
        RoutePlugins {
            own_cache: overrides
                .iter()
                .any(|(name, p)| name == CACHE_PLUGIN && p.is_some()),
            chain: chain(&self.global, &overrides),
        }
    }

    fn overrides<'a>(
        &self,
        doc: &mut Document<'a>,
        route_name: &str,
        section: Spanned<DeValue<'a>>,
        templates: TemplateScope,
    ) -> Vec<Override> {
        let ctx = &self.ctx;
        let section_key = KeyPath::root("routes").child(route_name).child("plugins");
        let mut scope = PluginScope {
            name: format!("route:{route_name}"),
            templates,
            slots: self.slots.clone(),
        };
        doc.entries(&section_key, section)
            .into_iter()
            .filter_map(|mut e| {
                let key = section_key.child(&e.name);
                let span = e.value.span();
                match Document::take_child(&mut e.value, "enabled").map(Spanned::into_inner) {
                    None | Some(DeValue::Boolean(true)) => {
                        build(doc, &key, &mut scope, &e.name, e.value, ctx)
                            .map(|p| (e.name, Some(p)))
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
}

/// The template scope of a route whose section did not deserialize (a required key is
/// missing), from what is left of it: its valid regex paths, so its plugins are checked as
/// they would be with the compiled route. Nothing is reported here; the route's problems are.
pub fn unparsed_route_templates(route: Spanned<DeValue<'_>>) -> TemplateScope {
    #[derive(Deserialize)]
    struct Paths {
        #[serde(default)]
        paths: Vec<String>,
    }
    let paths =
        Paths::deserialize(ValueDeserializer::from(route)).map_or_else(|_| Vec::new(), |p| p.paths);
    TemplateScope {
        path_regexes: paths
            .iter()
            .filter_map(|p| match PathPattern::parse(p) {
                Ok(PathPattern::Regex(re)) => Some(re),
                _ => None,
            })
            .collect(),
    }
}

/// The route's chain: global plugins not overridden, plus the route's own, grouped by phase.
fn chain(global: &GlobalPlugins, overrides: &[Override]) -> PluginChain {
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
        certificate_subjects: &s.certificate_subjects,
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
