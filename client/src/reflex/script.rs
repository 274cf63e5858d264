//! The reflex's Rhai scripts: one engine with limits, each script compiled once at load; a run
//! gets `command` (the command's body), `meta` (its id, sender, ttl), `state` (the document the
//! thing reported so far) and `tick` (for `every:`), and returns a map with the optional keys
//! `ack`, `state`, `event`. A failing script is an error message, never a crash.

use std::sync::Arc;

use rhai::{AST, Dynamic, Engine, Scope};
use serde_json::Value;

/// The limits of a script run: a script that loops for ever, recurses or grows without bound
/// is stopped with an error.
fn engine() -> Engine {
    let mut engine = Engine::new();
    engine
        .set_max_operations(1_000_000)
        .set_max_call_levels(32)
        .set_max_expr_depths(64, 32)
        .set_max_string_size(64 * 1024)
        .set_max_array_size(10_000)
        .set_max_map_size(10_000);
    engine.on_print(|text| tracing::info!(target: "mqtter::reflex", "{text}"));
    engine.on_debug(|text, _, _| tracing::debug!(target: "mqtter::reflex", "{text}"));
    engine
}

/// The one engine of a reflex file and its scripts.
#[derive(Clone)]
pub(super) struct Scripts {
    engine: Arc<Engine>,
}

/// A compiled script.
#[derive(Clone)]
pub(super) struct Script {
    ast: Arc<AST>,
    /// For messages: the file (and line) it came from.
    pub name: String,
}

/// Where a compile error is: line and column in the script's text (1-based), and the message.
pub(super) struct CompileError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        Scripts {
            engine: Arc::new(engine()),
        }
    }

    pub(super) fn compile(&self, name: String, text: &str) -> Result<Script, CompileError> {
        match self.engine.compile(text) {
            Ok(ast) => Ok(Script {
                ast: Arc::new(ast),
                name,
            }),
            Err(err) => {
                let at = err.position();
                Err(CompileError {
                    line: at.line().unwrap_or(0),
                    column: at.position().unwrap_or(0),
                    message: err.0.to_string(),
                })
            }
        }
    }

    /// Run `script` with these variables; its value as JSON (`null` for `()`).
    pub(super) fn run(&self, script: &Script, vars: &[(&str, &Value)]) -> Result<Value, String> {
        let mut scope = Scope::new();
        for (name, value) in vars {
            let value = rhai::serde::to_dynamic(*value).map_err(|e| e.to_string())?;
            scope.push_dynamic(name.to_string(), value);
        }
        let out: Dynamic = self
            .engine
            .eval_ast_with_scope(&mut scope, &script.ast)
            .map_err(|e| e.to_string())?;
        if out.is_unit() {
            return Ok(Value::Null);
        }
        rhai::serde::from_dynamic(&out).map_err(|e| format!("its value is not JSON: {e}"))
    }
}
